"""Strip reasoning from model text so only the final answer reaches a chat.

Rules (see WIRE.md, "Inline reasoning in text"):

- ``<think>``, ``<thinking>``, ``<thought>`` and ``<antthinking>`` blocks are removed
  (tag names case-insensitive, attributes tolerated, nesting counted);
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

:class:`ReasoningFilter` applies the rules to a stream of chunks (tags may be split
anywhere); :func:`strip_reasoning` is the one-shot form.
"""

from __future__ import annotations

import re

_REASONING_NAMES = ("think", "thinking", "thought", "antthinking")
_FINAL_NAMES = ("final",)
_ALL_NAMES = _REASONING_NAMES + _FINAL_NAMES
# Longest a tag with attributes may be before a "<think ..." is taken as plain text.
_MAX_TAG = 256

# Bare tags, or attributes of the form name="v", name='v' or name=v only.
_ATTR = r"""[A-Za-z_:][\w:.-]*\s*=\s*(?:"[^"<>]*"|'[^'<>]*'|[^\s"'<>=/`]+)"""
_TAG_RE = re.compile(
    r"<\s{0,8}(/?)\s{0,8}(antthinking|thinking|thought|think|final)"
    rf"(?=[\s/>])(?=[^<>]{{0,{_MAX_TAG}}}>)(?:\s+{_ATTR})*\s*/?\s*>",
    re.IGNORECASE,
)
_TAG_START_RE = re.compile(r"<\s*/?\s*([A-Za-z]*)")
_SPECIAL_RE = re.compile(r"[<`~\n]")

_NORMAL, _REASONING, _FENCE = "normal", "reasoning", "fence"


def _could_be_tag_prefix(s: str) -> bool:
    """True if ``s`` (starting with ``<``) may still grow into a reasoning/final tag."""
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
    whether a lone ``</think>`` turns it into reasoning: until it starts with an opening
    tag, or the first closing tag has arrived, or the stream ends.  Pass
    ``lone_close=False`` for models known not to open the tag in their template, so text
    can flow at once.  ``finish()`` returns whatever remains.  The result never depends
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
        self._raw = ""  # input held, unscanned, until the lone-close question is answered
        self._search_from = 0  # no closing tag starts before this offset of _raw
        self._out: list[str] = []  # emitted since the last feed()/finish() returned
        self._started = False  # any non-whitespace emitted yet
        self._ws_tail = ""  # trailing whitespace not emitted yet
        self._junction = False  # a block was just removed here
        self._finished = False

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
            m = _TAG_RE.match(head)
            if m is not None and not m.group(1) and m.group(2).lower() in _REASONING_NAMES:
                self._resolve(0)  # the model opens its own tags: ordinary rules
                return
            if m is None and not final and _could_be_tag_prefix(head):
                return  # wait: this may still become an opening tag
        close = _first_close(raw, self._search_from)
        if close is None:
            if final:
                self._resolve(0)
            else:
                self._search_from = max(self._search_from, len(raw) - (_MAX_TAG + 64))
            return
        example = _in_code_example(raw, close.start(), final=final)
        if example is None:
            return  # wait: a backtick's closer decides whether the tag is in code
        self._resolve(0 if example else close.end(), lone=not example)

    def _resolve(self, cut: int, *, lone: bool = False) -> None:
        """Hand the held text, from ``cut`` on, to the ordinary scanner."""
        self._resolved = True
        self._buf, self._raw = self._raw[cut:] + self._buf, ""
        if lone:
            self._line_start = False  # like after any tag

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


def _first_close(text: str, start: int) -> re.Match[str] | None:
    """The first closing reasoning tag in ``text`` from ``start``, code or not."""
    for m in _TAG_RE.finditer(text, start):
        if m.group(1) and m.group(2).lower() in _REASONING_NAMES:
            return m
    return None


def _has_open(text: str) -> bool:
    return any(not m.group(1) and m.group(2).lower() in _REASONING_NAMES
               for m in _TAG_RE.finditer(text))


def _in_code_example(text: str, pos: int, *, final: bool) -> bool | None:
    """Whether the closing tag at ``pos`` is part of a code example: it lies in code (a
    fence or an inline span, by the rules the scanner uses) and an opening reasoning tag
    appears in code before it.  None when a backtick whose closer has not arrived yet
    decides it."""
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
    return fence is not None and open_in_code  # pos at the start of a line in a fence


def strip_reasoning(text: str) -> str:
    """Return ``text`` with every form of inline reasoning removed (see module doc)."""
    f = ReasoningFilter()
    return f.feed(text) + f.finish()
