"""Strip reasoning from model text so only the final answer reaches a chat.

Rules (see WIRE.md, "Inline reasoning in text"):

- ``<think>``, ``<thinking>``, ``<thought>``, ``<antthinking>`` and ``<reasoning>`` blocks
  are removed (tag names case-insensitive, attributes tolerated, nesting counted);
- ``<final>`` / ``</final>`` tags are removed and their content kept;
- a *lone* closing tag (templates that open ``<think>`` inside the prompt: Qwen3,
  DeepSeek-R1, MiniMax M2) makes everything before it reasoning.  Unless the text starts
  with an opening tag, the first closing reasoning tag is lone: reasoning is not markdown,
  so backticks or fences in it do not hide the tag, and a ``<think>`` it merely mentions
  does not pair with it.  The one exception is a code example: the closing tag sits in
  code (a fence or an inline span) after an opening tag that is also in code, as in an
  answer showing ``<think>…</think>`` in a code block; that text is the answer;
- a reasoning block still open at the end is dropped;
- otherwise tags inside fenced code blocks (```` ``` ```` / ``~~~``) or inline code are
  text;
- a tag is a bare name (``<think>``, ``</think>``) or a name with ``name="value"``-style
  attributes (``<think mode=deep>``); ``<thought experiment>`` is prose;
- whitespace is tidied: the result is stripped and the gap left by a removed block
  collapses to one space or at most one blank line.

OpenAI's harmony format (gpt-oss through a raw template; openai/harmony docs/format.md):

- a message is ``<|start|>{header}<|message|>{content}`` ended by ``<|end|>``,
  ``<|return|>`` or ``<|call|>``; the header names the channel after ``<|channel|>``
  (``<|start|>`` may be missing: the template wrote it).  Only the content of a ``final``
  message without a recipient (``to=``) is answer text; ``analysis`` and ``commentary``
  messages and every header are dropped, and no special token is ever shown;
- once a special token has been seen outside code the text is harmony: from then on the
  tokens are structure wherever they stand (in the format they are single tokens, never
  text), so a final message ending in a code block still ends at its ``<|return|>``;
  before that, tokens in code are text (an answer explaining the format);
- lone tokens, as for ``</think>``: when the text does not start with a header, the text
  before a first ``<|start|>``, ``<|channel|>`` or ``<|call|>`` is dropped, and so is the
  text before an ``<|end|>`` that a header follows; text before ``<|message|>`` is the
  header (``analysis<|message|>…``); ``<|return|>`` ends the answer, and a token in code
  is text;
- a cut stream: an unfinished header or non-final message is dropped, and so is a
  special token cut short at the very end (``…<|ret``).

:class:`ReasoningFilter` applies the rules to a stream of chunks (tags may be split
anywhere); :func:`strip_reasoning` is the one-shot form.
"""

from __future__ import annotations

import re

_REASONING_NAMES = ("think", "thinking", "thought", "antthinking", "reasoning")
_FINAL_NAMES = ("final",)
_ALL_NAMES = _REASONING_NAMES + _FINAL_NAMES
# Longest a tag with attributes may be before a "<think ..." is taken as plain text.
_MAX_TAG = 256

# Bare tags, or attributes of the form name="v", name='v' or name=v only.
_ATTR = r"""[A-Za-z_:][\w:.-]*\s*=\s*(?:"[^"<>]*"|'[^'<>]*'|[^\s"'<>=/`]+)"""
_TAG_RE = re.compile(
    r"<\s{0,8}(/?)\s{0,8}(antthinking|thinking|thought|think|reasoning|final)"
    rf"(?=[\s/>])(?=[^<>]{{0,{_MAX_TAG}}}>)(?:\s+{_ATTR})*\s*/?\s*>",
    re.IGNORECASE,
)
_TAG_START_RE = re.compile(r"<\s*/?\s*([A-Za-z]*)")
_SPECIAL_RE = re.compile(r"[<`~\n]")

# Harmony's special tokens (one token each in the o200k_harmony encoding).
_HARMONY_NAMES = ("start", "end", "message", "channel", "constrain", "return", "call")
_HARMONY_TOKENS = tuple(f"<|{n}|>" for n in _HARMONY_NAMES)
_HARMONY_RE = re.compile(r"<\|(start|end|message|channel|constrain|return|call)\|>")
_HEADER_OPENERS = ("start", "channel")
_MESSAGE_ENDS = ("end", "return", "call")
# A header as the template may have left it: a role, channel, recipient, content type.
_HEADER_TEXT_RE = re.compile(r"[\w.:=-]+(?: +[\w.:=-]+){0,7} *")
_MAX_HEADER = 256  # header text kept to read the channel and recipient from

_NORMAL, _REASONING, _FENCE = "normal", "reasoning", "fence"
_HEADER, _HIDDEN = "header", "hidden"  # harmony: a message header, a non-final message


def _could_be_harmony_prefix(s: str) -> bool:
    """True if ``s`` is a proper beginning of a harmony special token."""
    return any(t.startswith(s) and t != s for t in _HARMONY_TOKENS)


def _harmony_shows(header: str) -> bool:
    """Whether a message with this header is answer text: the final channel, no recipient."""
    part = header.rsplit("<|channel|>", 1)[-1].split("<|constrain|>", 1)[0]
    words = part.split()
    return bool(words) and words[0] == "final" and "to=" not in header


def _could_be_tag_prefix(s: str) -> bool:
    """True if ``s`` (starting with ``<``) may still grow into a reasoning/final tag."""
    if s.startswith("<|"):
        return _could_be_harmony_prefix(s)
    m = _TAG_START_RE.match(s)
    if m is None:
        return False
    name = m.group(1).lower()
    if m.end() == len(s):
        return any(n.startswith(name) for n in _ALL_NAMES)
    if name in _ALL_NAMES and s[m.end()] in " \t\r\n/":
        rest = s[m.end():]
        return ">" not in rest and "<" not in rest and len(s) <= _MAX_TAG + 20
    return False


class ReasoningFilter:
    """Incremental reasoning stripper: ``feed(chunk)`` returns text safe to emit now.

    With ``lone_close=True`` (the default) the text is held back until it is known
    whether a lone ``</think>`` (or harmony token) turns it into reasoning: until it
    starts with an opening tag or a harmony header, or the first closing tag or special
    token has decided it, or the stream ends.  Pass
    ``lone_close=False`` for models known not to open the tag in their template
    (``thinkTags: "paired"``), so text can flow at once; there a lone closing tag is a
    stray and dropped.  :meth:`server_parses_reasoning` switches to that mode while
    nothing has been fed.  ``finish()`` returns whatever remains.  The result never depends
    on how the text was split into chunks.
    """

    def __init__(self, *, lone_close: bool = True) -> None:
        self._buf = ""
        self._state = _NORMAL
        self._depth = 0
        self._fence: str | None = None  # the fence marker, e.g. "```"
        self._fence_first_line = False  # still on the opener's line (info string)
        self._line_start = True  # at the beginning of a line (only spaces since)
        self._resolved = not lone_close  # lone-close question answered
        self._lone_close = lone_close  # a lone closing tag may still make reasoning
        self._raw = ""  # input held, unscanned, until the lone-close question is answered
        self._search_from = 0  # no closing tag starts before this offset of _raw
        self._out: list[str] = []  # emitted since the last feed()/finish() returned
        self._started = False  # any non-whitespace emitted yet
        self._ws_tail = ""  # trailing whitespace not emitted yet
        self._junction = False  # a block was just removed here
        self._finished = False
        self._harmony = False  # a harmony token seen outside code: tokens are structure now
        self._header = ""  # the harmony message header read so far
        self._end_next_from = 0  # after a lone <|end|>: where to look for the next token

    # ------------------------------------------------------------------ public API

    def feed(self, chunk: str) -> str:
        """Add a chunk; return the text that can be shown now (possibly empty)."""
        if self._finished:
            raise RuntimeError("ReasoningFilter.feed() after finish()")
        if self._resolved:
            self._buf += chunk
        else:
            self._raw += chunk
            self._decide(final=False)
        self._scan(final=False)
        return self._take()

    def finish(self) -> str:
        """End of stream: flush what is left (an unclosed reasoning block is dropped)."""
        if not self._finished:
            if not self._resolved:
                self._decide(final=True)
            self._scan(final=True)
            self._buf = ""
            self._finished = True
        return self._take()

    def server_parses_reasoning(self) -> None:
        """The server delivers reasoning through a separate channel (a
        ``reasoning_content`` delta, a Responses reasoning item, an Anthropic thinking
        block): answer the lone-close question as "no lone close" now.

        Such a server has parsed the reasoning out itself, so its text is answer text and
        a late lone ``</think>`` in it is not plausible; text can flow at once (a live
        preview needs that).  From here the filter is exactly ``lone_close=False``: a
        stray closing tag is dropped and the text before it kept.  It applies only while
        nothing but whitespace has been fed; once text was held, the text alone decides
        (so the result still never depends on the chunking), and it is a no-op when the
        question is answered already.
        """
        if not self._resolved and not self._finished and not self._raw.strip():
            self._lone_close = False
            self._resolve(0)

    @property
    def lone_close(self) -> bool:
        """The mode to filter the same answer again with: False when constructed so or
        switched by :meth:`server_parses_reasoning`."""
        return self._lone_close

    # ------------------------------------------------------------------ lone close

    def _decide(self, *, final: bool) -> None:
        """Answer the lone-close question from the raw text held so far, if possible.

        Decided on raw text alone, the same way whatever the chunking, so the stream
        gives exactly what :func:`strip_reasoning` gives.
        """
        raw = self._raw
        head = raw.lstrip()
        if not head:
            if final:
                self._resolve(0)
            return
        if head[0] == "<":
            if head.startswith(("<|start|>", "<|channel|>")):
                self._resolve(0)  # the model writes its own harmony headers
                return
            m = _TAG_RE.match(head)
            if m is not None and not m.group(1) and m.group(2).lower() in _REASONING_NAMES:
                self._resolve(0)  # the model opens its own tags: ordinary rules
                return
            if m is None and not final and _could_be_tag_prefix(head):
                return  # wait: this may still become an opening tag
        close = _first_marker(raw, self._search_from)
        if close is None:
            if final:
                self._resolve(0)
            else:
                self._search_from = max(self._search_from, len(raw) - (_MAX_TAG + 64))
            return
        if close.re is _HARMONY_RE:
            self._decide_harmony(close, final=final)
            return
        example = _in_code_example(raw, close.start(), final=final)
        if example is None:
            return  # wait: a backtick's closer decides whether the tag is in code
        self._resolve(0 if example else close.end(), lone=not example)

    def _decide_harmony(self, token: re.Match[str], *, final: bool) -> None:
        """The lone-close question when the first marker is a harmony special token."""
        raw = self._raw
        name = token.group(1)
        if name == "return":
            self._resolve(0)  # it ends the answer: the text before it is the answer
            return
        if name in ("message", "constrain"):
            header = raw[: token.start()].strip()
            if header and _HEADER_TEXT_RE.fullmatch(header):
                self._resolve(token.start(), harmony_header=header)  # analysis<|message|>
            else:
                self._resolve(0)
            return
        if name == "end":
            # Lone only when a header follows: a trailing <|end|> is another family's
            # end-of-turn token (Phi-3) after a plain answer.
            self._search_from = token.start()
            nxt = _HARMONY_RE.search(raw, max(token.end(), self._end_next_from))
            if nxt is None:
                if final:
                    self._resolve(0)
                else:
                    self._end_next_from = max(token.end(), len(raw) - len("<|constrain|>"))
                return
            if nxt.group(1) not in _HEADER_OPENERS:
                self._resolve(0)
                return
        in_code = _in_code_example(raw, token.start(), final=final, any_code=True)
        if in_code is None:
            return  # wait: a backtick's closer decides whether the token is in code
        if in_code:
            self._resolve(0)  # an answer quoting the format
            return
        # <|end|> then a header, <|call|> (a tool call's arguments): drop through the token;
        # <|start|>, <|channel|>: a new message begins here.
        self._resolve(token.start() if name in _HEADER_OPENERS else token.end(), harmony=True)

    def _resolve(self, cut: int, *, lone: bool = False, harmony: bool = False,
                 harmony_header: str | None = None) -> None:
        """Hand the held text, from ``cut`` on, to the ordinary scanner."""
        self._resolved = True
        self._buf, self._raw = self._raw[cut:] + self._buf, ""
        if lone:
            self._line_start = False  # like after any tag
        if harmony or harmony_header is not None:
            self._harmony = True
        if harmony_header is not None:
            self._state = _HEADER
            self._header = harmony_header

    # ------------------------------------------------------------------ output

    def _take(self) -> str:
        text = "".join(self._out)
        self._out.clear()
        return text

    def _text(self, text: str) -> None:
        """Answer text."""
        if text:
            self._emit(text)

    def _emit(self, text: str) -> None:
        if not text:
            return
        if self._junction:
            body = text.lstrip()
            gap = self._ws_tail + text[: len(text) - len(body)]
            if not body:
                self._ws_tail = gap
                return
            self._junction = False
            newlines = min(gap.count("\n"), 2)
            self._ws_tail = "\n" * newlines if newlines else (" " if gap else "")
            text = body
        combined = self._ws_tail + text
        body = combined.rstrip()
        self._ws_tail = combined[len(body):]
        if not body:
            return
        if not self._started:
            body = body.lstrip()
            self._started = True
        self._out.append(body)

    def _block_removed(self) -> None:
        if self._started:
            self._junction = True

    # ------------------------------------------------------------------ scanning

    def _scan(self, *, final: bool) -> None:
        while self._buf:
            if self._state == _REASONING:
                progressed = self._scan_reasoning(final)
            elif self._state in (_HEADER, _HIDDEN):
                progressed = self._scan_harmony(final)
            elif self._state == _FENCE:
                progressed = self._scan_fence(final)
            else:
                progressed = self._scan_normal(final)
            if not progressed:
                break

    def _consume(self, n: int) -> str:
        taken, self._buf = self._buf[:n], self._buf[n:]
        return taken

    def _scan_reasoning(self, final: bool) -> bool:
        buf = self._buf
        m = _TAG_RE.search(buf)
        while m is not None and m.group(2).lower() not in _REASONING_NAMES:
            m = _TAG_RE.search(buf, m.end())
        if self._harmony:
            token = _HARMONY_RE.search(buf, 0, m.start() if m is not None else len(buf))
            if token is not None:  # the message ends, and the block with it
                self._consume(token.start())
                self._depth = 0
                self._state = _NORMAL
                self._block_removed()
                return True
        if m is None:
            # Drop everything except a possible partial tag at the end.
            cut = len(buf)
            if not final:
                lt = buf.rfind("<")
                if lt != -1 and _could_be_tag_prefix(buf[lt:]):
                    cut = lt
            self._consume(cut)
            return False
        self._consume(m.end())
        if m.group(1):
            self._depth -= 1
            if self._depth <= 0:
                self._depth = 0
                self._state = _NORMAL
                self._line_start = False
                self._block_removed()
        else:
            self._depth += 1
        return True

    def _scan_fence(self, final: bool) -> bool:
        buf = self._buf
        nl = buf.find("\n")
        if self._harmony:
            token = _HARMONY_RE.search(buf, 0, nl if nl != -1 else len(buf))
            if token is not None:  # the message ends, and the code block with it
                self._text(self._consume(token.start()))
                self._fence = None
                self._state = _NORMAL
                return True
        if nl == -1:
            if not final:
                return False
            line, ending = buf, ""
        else:
            line, ending = buf[:nl], "\n"
        self._consume(len(line) + len(ending))
        self._text(line + ending)
        self._line_start = True
        if self._fence_first_line:
            self._fence_first_line = False
            return True
        stripped = line.strip()
        assert self._fence is not None
        if (
            len(line) - len(line.lstrip(" ")) <= 3
            and stripped.startswith(self._fence)
            and set(stripped) == {self._fence[0]}
        ):
            self._fence = None
            self._state = _NORMAL
        return True

    def _scan_normal(self, final: bool) -> bool:
        buf = self._buf
        m = _SPECIAL_RE.search(buf)
        if m is None:
            self._text(self._consume(len(buf)))
            if buf.strip(" "):
                self._line_start = False
            return False
        if m.start():
            before = self._consume(m.start())
            self._text(before)
            if before.strip(" "):
                self._line_start = False
            return True
        ch = buf[0]
        if ch == "\n":
            self._text(self._consume(1))
            self._line_start = True
            return True
        if ch in "`~":
            return self._scan_code(final)
        return self._scan_tag(final)

    def _scan_code(self, final: bool) -> bool:
        buf = self._buf
        ch = buf[0]
        run = len(buf) - len(buf.lstrip(ch))
        if run == len(buf) and not final:
            return False  # the run may continue in the next chunk
        if self._line_start and run >= 3:
            # A fence opener; the rest of its line is the info string.
            self._fence = ch * run
            self._fence_first_line = True
            self._state = _FENCE
            self._text(self._consume(run))
            return True
        self._line_start = False
        if ch == "~":
            self._text(self._consume(run))
            return True
        # Inline code: a closing run of exactly the same length within the paragraph.
        closer = re.compile(r"(?<!`)" + "`" * run + r"(?!`)")
        m = closer.search(buf, run)
        para_end = buf.find("\n\n", run)
        if self._harmony:
            token = _HARMONY_RE.search(buf, run, m.start() if m is not None else len(buf))
            if token is not None:  # the message ends before a closer: the run is literal
                self._text(self._consume(run))
                return True
        if m is not None and m.end() == len(buf) and not final:
            return False  # the closing run may continue in the next chunk
        if m is not None and (para_end == -1 or m.start() < para_end):
            self._text(self._consume(m.end()))
            return True
        if para_end != -1 or final:
            self._text(self._consume(run))  # unmatched backticks are literal
            return True
        return False

    def _scan_tag(self, final: bool) -> bool:
        buf = self._buf
        token = _HARMONY_RE.match(buf)
        if token is not None:
            self._consume(token.end())
            self._harmony = True
            self._harmony_token(token.group(1))
            return True
        if final and buf.startswith("<|") and _could_be_harmony_prefix(buf):
            self._consume(len(buf))  # a special token cut short by the end of the stream
            return False
        m = _TAG_RE.match(buf)
        if m is None:
            if not final and _could_be_tag_prefix(buf):
                return False
            self._text(self._consume(1))
            self._line_start = False
            return True
        self._consume(m.end())
        self._line_start = False
        closing = bool(m.group(1))
        name = m.group(2).lower()
        if name in _FINAL_NAMES or m.group(0).endswith("/>"):
            return True  # unwrap: drop the tag, keep its content
        if closing:
            self._block_removed()  # a stray closing tag in the answer: dropped
            return True
        self._state = _REASONING
        self._depth = 1
        return True

    # ------------------------------------------------------------------ harmony

    def _scan_harmony(self, final: bool) -> bool:
        """A header (kept to read its channel) or a non-final message (dropped)."""
        buf = self._buf
        token = _HARMONY_RE.search(buf)
        cut = token.start() if token is not None else len(buf)
        if token is None and not final:
            lt = buf.rfind("<", max(0, len(buf) - len("<|constrain|>")))
            if lt != -1 and _could_be_harmony_prefix(buf[lt:]):
                cut = lt  # a token may be arriving
        if self._state == _HEADER and len(self._header) < _MAX_HEADER:
            self._header = (self._header + buf[:cut])[:_MAX_HEADER]
        self._consume(cut)
        if token is None:
            return False
        self._consume(len(token.group(0)))
        self._harmony_token(token.group(1))
        return True

    def _harmony_token(self, name: str) -> None:
        """Act on a harmony special token (the token itself is never shown)."""
        state = self._state
        if name in _HEADER_OPENERS:
            if state == _NORMAL:
                self._block_removed()
            if state == _HEADER and name == "channel":
                self._header += "<|channel|>"
            else:
                self._header = "<|channel|>" if name == "channel" else ""
            self._state = _HEADER
        elif name in _MESSAGE_ENDS:
            if state == _NORMAL:
                self._block_removed()
            self._state = _NORMAL
            self._line_start = True
        elif state == _HEADER and name == "constrain":
            self._header += "<|constrain|>"
        elif state == _HEADER:  # <|message|>: the content begins
            if _harmony_shows(self._header):
                self._state = _NORMAL
                self._line_start = True
            else:
                self._state = _HIDDEN
            self._header = ""
        elif state == _NORMAL:
            self._block_removed()  # a stray <|message|> or <|constrain|>: dropped


def _first_marker(text: str, start: int) -> re.Match[str] | None:
    """The first closing reasoning tag or harmony token in ``text`` from ``start``, code
    or not."""
    token = _HARMONY_RE.search(text, start)
    for m in _TAG_RE.finditer(text, start, token.start() if token is not None else len(text)):
        if m.group(1) and m.group(2).lower() in _REASONING_NAMES:
            return m
    return token


def _any(text: str) -> bool:
    return True


def _has_open_tag(text: str) -> bool:
    return any(not m.group(1) and m.group(2).lower() in _REASONING_NAMES
               for m in _TAG_RE.finditer(text))


def _in_code_example(text: str, pos: int, *, final: bool,
                     any_code: bool = False) -> bool | None:
    """Whether the closing tag at ``pos`` is part of a code example: it lies in code (a
    fence or an inline span, by the rules the scanner uses) and an opening reasoning tag
    appears in code before it (with ``any_code``: whether ``pos`` lies in code at all).
    None when a backtick whose closer has not arrived yet decides it."""
    _has_open = _any if any_code else _has_open_tag
    i = 0
    line_start = True
    fence: str | None = None
    open_in_code = False
    while i < pos:
        if fence is not None:
            nl = text.find("\n", i)
            if nl == -1 or nl >= pos:
                return open_in_code or _has_open(text[i:pos])  # pos is in this fence
            line = text[i:nl]
            open_in_code = open_in_code or _has_open(line)
            stripped = line.strip()
            if (len(line) - len(line.lstrip(" ")) <= 3 and stripped.startswith(fence)
                    and set(stripped) == {fence[0]}):
                fence = None
            i = nl + 1
            line_start = True
            continue
        ch = text[i]
        if ch == "\n":
            line_start = True
            i += 1
            continue
        if ch not in "`~":
            if ch not in " \t":
                line_start = False
            i += 1
            continue
        run = len(text[i:]) - len(text[i:].lstrip(ch))
        if i + run == len(text) and not final:
            return None  # the run may grow
        if line_start and run >= 3:  # a fence opener; its info string is code too
            nl = text.find("\n", i)
            if nl == -1 or nl >= pos:
                return open_in_code or _has_open(text[i:pos])
            fence = ch * run
            i = nl + 1
            continue
        line_start = False
        if ch == "~":
            i += run
            continue
        closer = re.compile(r"(?<!`)" + "`" * run + r"(?!`)").search(text, i + run)
        para_end = text.find("\n\n", i + run)
        if closer is not None and closer.end() == len(text) and not final:
            return None  # the closing run may grow into a longer one
        if closer is not None and (para_end == -1 or closer.start() < para_end):
            if closer.start() >= pos:  # pos is inside this inline span
                return open_in_code or _has_open(text[i + run:pos])
            open_in_code = open_in_code or _has_open(text[i + run:closer.start()])
            i = closer.end()
            continue
        if para_end == -1 and not final:
            return None  # the closer may still come
        i += run  # unmatched backticks are literal
    # pos at the start of a line in a fence
    return fence is not None and (open_in_code or any_code)


def strip_reasoning(text: str, *, lone_close: bool = True) -> str:
    """Return ``text`` with every form of inline reasoning removed (see module doc);
    ``lone_close`` as for :class:`ReasoningFilter`."""
    f = ReasoningFilter(lone_close=lone_close)
    return f.feed(text) + f.finish()
