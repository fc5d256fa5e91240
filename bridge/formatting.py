"""Markdown from a model -> a chat's markup (Telegram HTML, WhatsApp, plain), in chunks.

Models answer in Markdown.  Telegram wants a small HTML dialect, WhatsApp its own
``*bold*`` markup, and both cap a message's length.  This module is a small, careful
converter (no Markdown library) in three steps:

1. :func:`_parse_blocks` splits the text into blocks (paragraphs, headings, fenced code,
   quotes, lists, tables, rules) and :func:`_parse_inline` parses emphasis, code spans
   and links inside them; anything unmatched stays literal text.  ``_`` and a single
   ``*`` never open or close inside a word (``snake_case``, ``2*3*4``); code spans,
   links and bare URLs are opaque to emphasis.
2. A renderer turns blocks into a flat stream of tokens: text, and "open"/"close"
   markers that know their own opening and closing markup (``<b>``/``</b>``,
   ``*``/``*``, ``<pre><code class="language-py">``...).  It keeps within the Bot
   API's nesting rules: a span already open is not reopened (a bold heading with bold
   inside), a quote inside a quote becomes "│ "-prefixed lines inside the one
   ``<blockquote>``, and link text holds no code or link.
3. :func:`_chunk_atoms` cuts that stream under the limit, preferring a paragraph break, then a
   line break, then a sentence end, then a space; every chunk closes the markup still
   open at its end and the next one reopens it (a code block split in two is closed and
   reopened with its language).  Splits never fall inside a tag or an HTML entity,
   because only text positions are split points.  Whitespace inside code is content:
   it may be split, never dropped (only the newline at a line split is).

Lengths are measured in UTF-16 code units (how Telegram counts) over the whole chunk,
markup included, which is a safe upper bound of what the platform counts.

Public API: :func:`render`, :func:`to_telegram_html`, :func:`to_whatsapp`,
:func:`to_plain`, :func:`chunk_text`, :func:`utf16_len`.
"""

from __future__ import annotations

import html
import re
import string
from collections.abc import Callable
from dataclasses import dataclass

from bridge.ports import Markup

__all__ = [
    "chunk_text",
    "render",
    "to_plain",
    "to_telegram_html",
    "to_whatsapp",
    "utf16_len",
]


def utf16_len(text: str) -> int:
    """Length of ``text`` in UTF-16 code units (characters outside the BMP count twice)."""
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


# =========================================================================== inline AST


@dataclass(slots=True)
class _Text:
    text: str


@dataclass(slots=True)
class _Code:
    text: str


@dataclass(slots=True)
class _Span:
    kind: str  # "bold" | "italic" | "strike"
    children: list


@dataclass(slots=True)
class _Link:
    children: list
    url: str


_PUNCT = frozenset(string.punctuation)
_URL_RE = re.compile(r"(?:https?|ftp)://[^\s<>\"'`]+", re.IGNORECASE)
_AUTOLINK_RE = re.compile(r"<((?:https?|ftp)://[^\s<>]+|mailto:[^\s<>]+)>", re.IGNORECASE)
_LINK_TAIL_RE = re.compile(
    r"\(\s*<?((?:[^\s()<>]|\([^\s()<>]*\))*)>?(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)"
)
_URL_TRAIL = ".,;:!?*_~)"  # trailing characters that usually belong to the sentence


def _run_length(s: str, i: int, ch: str) -> int:
    j = i
    while j < len(s) and s[j] == ch:
        j += 1
    return j - i


def _code_span_end(s: str, i: int) -> tuple[int, int]:
    """For a backtick run at ``i``: (start of closing run, run length), or (-1, run)."""
    run = _run_length(s, i, "`")
    j = i + run
    while True:
        j = s.find("`", j)
        if j < 0:
            return -1, run
        r = _run_length(s, j, "`")
        if r == run:
            return j, run
        j += r


def _url_at(s: str, i: int) -> tuple[int, int] | None:
    """A bare URL starting at ``i``: (end of the URL proper, end with trailing punctuation).

    Trailing ``.,;:!?*_~`` and an unbalanced ``)`` are usually the sentence's, not the
    URL's; the caller decides what to do with them.
    """
    if s[i] not in "hHfF" or (i > 0 and s[i - 1].isalnum()):
        return None
    m = _URL_RE.match(s, i)
    if not m:
        return None
    url = m.group(0)
    while url and url[-1] in _URL_TRAIL:
        if url[-1] == ")" and url.count("(") >= url.count(")"):
            break
        url = url[:-1]
    return i + len(url), m.end()


def _closer_at(s: str, j: int, start: int, ch: str, dlen: int) -> tuple[int, int]:
    """For the ``ch`` run at ``j``: (closer index or -1, run length)."""
    run = _run_length(s, j, ch)
    if run == dlen or (run == 3 and dlen < 3):
        closer = j + run - dlen
        before = s[j - 1] if j > 0 else " "
        after = s[j + run] if j + run < len(s) else " "
        ok = closer > start and not before.isspace()
        if (ch == "_" or dlen == 1) and after.isalnum():
            ok = False  # intraword: snake_case, 2*3*4
        if ok:
            return closer, run
    return -1, run


def _find_closer(s: str, start: int, ch: str, dlen: int) -> int:
    """Index where a ``dlen``-long closing ``ch`` delimiter starts, or -1.

    Code spans, links and bare URLs are opaque: a closer is never found inside them.
    The exception is a URL's trailing ``_``/``*``, which closes the emphasis only if
    nothing later does (``*see https://x.com/a*`` versus ``_see https://x.com/a_b_ now_``).
    """
    n = len(s)
    j = start
    pending = -1  # first closer candidate at the end of a URL
    while j < n:
        c = s[j]
        if c == "\\":
            j += 2
            continue
        if c == "`":
            end, run = _code_span_end(s, j)
            j = end + run if end >= 0 else j + run
            continue
        if c == "[":
            found = _match_link(s, j)
            if found:
                j = found[2]
                continue
        elif c == "<":
            m = _AUTOLINK_RE.match(s, j)
            if m:
                j = m.end()
                continue
        elif c in "hHfF":
            url = _url_at(s, j)
            if url:
                core, full = url
                k = core
                while pending < 0 and k < full:
                    if s[k] == ch:
                        closer, run = _closer_at(s, k, start, ch, dlen)
                        if closer >= 0 and closer + dlen <= full:
                            pending = closer
                        k += run
                    else:
                        k += 1
                j = full
                continue
        if c == ch:
            closer, run = _closer_at(s, j, start, ch, dlen)
            if closer >= 0:
                return closer
            j += run
            continue
        j += 1
    return pending


_bracket_cache: dict[str, dict[int, int]] = {}


def _bracket_map(s: str) -> dict[int, int]:
    """Index of every ``[`` in ``s`` -> index of its matching ``]`` (one linear pass).

    Escapes and code spans are skipped and a blank line ends every open bracket, so a
    failed link costs nothing however many ``[`` the text holds.
    """
    cached = _bracket_cache.get(s)
    if cached is not None:
        return cached
    pairs: dict[int, int] = {}
    stack: list[int] = []
    n = len(s)
    j = 0
    while j < n:
        c = s[j]
        if c == "\\":
            j += 2
            continue
        if c == "`":
            end, run = _code_span_end(s, j)
            j = end + run if end >= 0 else j + run
            continue
        if c == "[":
            stack.append(j)
        elif c == "]":
            if stack:
                pairs[stack.pop()] = j
        elif c == "\n" and j + 1 < n and s[j + 1] == "\n":
            stack.clear()
        j += 1
    if len(_bracket_cache) >= 32:
        _bracket_cache.clear()
    _bracket_cache[s] = pairs
    return pairs


def _match_link(s: str, i: int) -> tuple[str, str, int] | None:
    """``[text](url)`` starting at ``i`` -> (text, url, end index) or None."""
    j = _bracket_map(s).get(i)
    if j is None:
        return None
    m = _LINK_TAIL_RE.match(s, j + 1)
    if not m:
        return None
    return s[i + 1 : j], m.group(1), m.end()


def _parse_inline(s: str) -> list:
    """Parse emphasis, code spans and links; unmatched markup stays literal text."""
    nodes: list = []
    buf: list[str] = []
    n = len(s)
    i = 0
    # (delimiter, length) -> start of a closer search that failed.  A later search for
    # the same delimiter scans a suffix of the same text and fails too: skipping it keeps
    # "*a *b *c ..." linear instead of quadratic.
    failed: dict[tuple[str, int], int] = {}

    def flush() -> None:
        if buf:
            nodes.append(_Text("".join(buf)))
            buf.clear()

    while i < n:
        c = s[i]
        if c == "\\" and i + 1 < n and s[i + 1] in _PUNCT:
            buf.append(s[i + 1])
            i += 2
            continue
        if c == "`":
            end, run = _code_span_end(s, i)
            if end >= 0:
                content = s[i + run : end].replace("\n", " ")
                if len(content) > 1 and content[0] == " " and content[-1] == " " and content.strip():
                    content = content[1:-1]
                flush()
                nodes.append(_Code(content))
                i = end + run
            else:
                buf.append("`" * run)
                i += run
            continue
        if c in "hHfF":
            url = _url_at(s, i)
            if url:
                # A bare URL is opaque text; its trailing punctuation is parsed normally.
                buf.append(s[i : url[0]])
                i = url[0]
                continue
        if c == "<":
            m = _AUTOLINK_RE.match(s, i)
            if m:
                flush()
                nodes.append(_Link([_Text(m.group(1))], m.group(1)))
                i = m.end()
                continue
        if c == "[" or (c == "!" and i + 1 < n and s[i + 1] == "["):
            start = i + 1 if c == "!" else i
            found = _match_link(s, start)
            if found:
                text, url, end = found
                flush()
                children = _parse_inline(text) if text else [_Text(url)]
                nodes.append(_Link(children, url))
                i = end
                continue
        if c in "*_~":
            run = _run_length(s, i, c)
            after = s[i + run] if i + run < n else " "
            before = s[i - 1] if i > 0 else " "
            dlen = 0
            if c == "~":
                dlen = 2 if run == 2 else 0
            else:
                dlen = min(run, 3)
            # "_" and a single "*" never open inside a word (snake_case, 2*3*4).
            intraword = before.isalnum() and (c == "_" or dlen == 1)
            opener_ok = dlen and not after.isspace() and not intraword and run == dlen
            key = (c, dlen)
            if opener_ok and failed.get(key, n) > i:
                closer = _find_closer(s, i + dlen, c, dlen)
                if closer < 0:
                    failed[key] = i
                inner_text = s[i + dlen : closer]
                if closer >= 0 and before.isalnum() and any(ch.isspace() for ch in inner_text):
                    closer = -1  # "2**3 = 8 and 3**2": arithmetic, not bold
                if closer >= 0:
                    inner = _parse_inline(inner_text)
                    flush()
                    if c == "~":
                        nodes.append(_Span("strike", inner))
                    elif dlen == 1:
                        nodes.append(_Span("italic", inner))
                    elif dlen == 2:
                        nodes.append(_Span("bold", inner))
                    else:
                        nodes.append(_Span("bold", [_Span("italic", inner)]))
                    i = closer + dlen
                    continue
            if c != "~" and run >= 3:
                # "***x**" and the like: one literal star, then try again.
                buf.append(c)
                i += 1
                continue
            buf.append(c * run)
            i += run
            continue
        buf.append(c)
        i += 1
    flush()
    return nodes


def _plain_inline(nodes: list) -> str:
    """Inline nodes as plain text (links as "text (url)")."""
    out: list[str] = []
    for node in nodes:
        if isinstance(node, (_Text, _Code)):
            out.append(node.text)
        elif isinstance(node, _Span):
            out.append(_plain_inline(node.children))
        else:
            text = _plain_inline(node.children)
            out.append(text if text == node.url else f"{text} ({node.url})")
    return "".join(out)


# =========================================================================== blocks


@dataclass(slots=True)
class _Para:
    text: str


@dataclass(slots=True)
class _Heading:
    text: str


@dataclass(slots=True)
class _CodeBlock:
    lang: str
    text: str


@dataclass(slots=True)
class _Quote:
    blocks: list


@dataclass(slots=True)
class _ListItem:
    level: int
    marker: str  # "•" for bullets, "3." for ordered
    task: str | None  # None, " " or "x"
    text: str


@dataclass(slots=True)
class _List:
    items: list[_ListItem]


@dataclass(slots=True)
class _Table:
    rows: list[list[str]]


@dataclass(slots=True)
class _Rule:
    pass


_FENCE_RE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([^\s`]*)[^`]*$")
_HEADING_RE = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$|^ {0,3}(#{1,6})[ \t]*$")
_RULE_RE = re.compile(r"^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$")
_QUOTE_RE = re.compile(r"^ {0,3}> ?")
_LIST_RE = re.compile(r"^(\s*)([-*+]|\d{1,9}[.)])[ \t]+(.*)$")
_TASK_RE = re.compile(r"^\[([ xX])\][ \t]+")
_TABLE_SEP_RE = re.compile(r"^\s*\|?\s*:?-+:?\s*(?:\|\s*:?-+:?\s*)*\|?\s*$")
_SETEXT_RE = re.compile(r"^ {0,3}=+[ \t]*$")


def _indent_width(line: str) -> int:
    width = 0
    for ch in line:
        if ch == " ":
            width += 1
        elif ch == "\t":
            width += 4 - width % 4
        else:
            break
    return width


def _is_table_start(lines: list[str], i: int) -> bool:
    return (
        "|" in lines[i]
        and i + 1 < len(lines)
        and "|" in lines[i + 1]
        and "-" in lines[i + 1]
        and bool(_TABLE_SEP_RE.match(lines[i + 1]))
    )


def _split_row(line: str) -> list[str]:
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|") and not line.endswith("\\|"):
        line = line[:-1]
    cells: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(line):
        if line[i] == "\\" and i + 1 < len(line) and line[i + 1] == "|":
            cur.append("|")
            i += 2
            continue
        if line[i] == "|":
            cells.append("".join(cur).strip())
            cur = []
        else:
            cur.append(line[i])
        i += 1
    cells.append("".join(cur).strip())
    return cells


def _starts_block(lines: list[str], i: int) -> bool:
    line = lines[i]
    return bool(
        _FENCE_RE.match(line)
        or _HEADING_RE.match(line)
        or _QUOTE_RE.match(line)
        or _RULE_RE.match(line)
        or _LIST_RE.match(line)
        or _is_table_start(lines, i)
    )


def _parse_blocks(md: str) -> list:
    """Split Markdown into blocks; every line ends up in exactly one block."""
    lines = md.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return _parse_lines(lines)


def _parse_lines(lines: list[str]) -> list:
    blocks: list = []
    i = 0
    n = len(lines)
    while i < n:
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        m = _FENCE_RE.match(line)
        if m:
            indent = _indent_width(m.group(1))
            fence = m.group(2)
            lang = m.group(3)
            body: list[str] = []
            i += 1
            while i < n:
                cur = lines[i]
                stripped = cur.strip()
                if stripped.startswith(fence[0] * len(fence)) and not stripped.strip(fence[0]):
                    i += 1
                    break
                # Remove the fence's own indentation from the code lines.
                cut = 0
                while cut < len(cur) and cut < indent and cur[cut] == " ":
                    cut += 1
                body.append(cur[cut:])
                i += 1
            blocks.append(_CodeBlock(lang, "\n".join(body)))
            continue
        m = _HEADING_RE.match(line)
        if m:
            blocks.append(_Heading((m.group(2) or "").strip()))
            i += 1
            continue
        if _RULE_RE.match(line):
            blocks.append(_Rule())
            i += 1
            continue
        if _QUOTE_RE.match(line):
            inner: list[str] = []
            while i < n and _QUOTE_RE.match(lines[i]):
                inner.append(_QUOTE_RE.sub("", lines[i], count=1))
                i += 1
            blocks.append(_Quote(_parse_lines(inner)))
            continue
        if _is_table_start(lines, i):
            rows = [_split_row(line)]
            i += 2
            while i < n and lines[i].strip() and "|" in lines[i]:
                rows.append(_split_row(lines[i]))
                i += 1
            blocks.append(_Table(rows))
            continue
        m = _LIST_RE.match(line)
        if m:
            items: list[_ListItem] = []
            indents: list[int] = []
            while i < n:
                cur = lines[i]
                lm = _LIST_RE.match(cur)
                if lm and not _RULE_RE.match(cur):
                    width = _indent_width(lm.group(1))
                    while indents and width < indents[-1]:
                        indents.pop()
                    if not indents or width > indents[-1] + 1:
                        indents.append(width)
                    level = len(indents) - 1
                    marker = lm.group(2)
                    marker = "•" if marker in "-*+" else marker[:-1] + "."
                    text = lm.group(3)
                    task = None
                    tm = _TASK_RE.match(text)
                    if tm:
                        task = tm.group(1).lower()
                        text = text[tm.end() :]
                    items.append(_ListItem(level, marker, task, text.rstrip()))
                    i += 1
                    continue
                if cur.strip() and items and _indent_width(cur) >= 2 and not _FENCE_RE.match(cur):
                    items[-1].text += "\n" + cur.strip()
                    i += 1
                    continue
                break
            blocks.append(_List(items))
            continue
        para: list[str] = [line.strip()]
        i += 1
        while i < n and lines[i].strip() and not _starts_block(lines, i):
            if _SETEXT_RE.match(lines[i]):
                break
            para.append(lines[i].strip())
            i += 1
        if i < n and _SETEXT_RE.match(lines[i]) and para:
            blocks.append(_Heading(" ".join(para)))
            i += 1
            continue
        blocks.append(_Para("\n".join(para)))
    return blocks


# =========================================================================== tokens


@dataclass(frozen=True, slots=True)
class _Open:
    open: str
    close: str
    pre: bool = False  # inside: code, never a paragraph/sentence split


class _CloseTok:
    __slots__ = ()


_CLOSE = _CloseTok()


@dataclass(frozen=True, slots=True)
class _Txt:
    text: str
    newline: str = "\n"  # what a newline renders as (prefix-style quotes add "> ")


@dataclass(slots=True)
class _Spec:
    """How one markup renders each element."""

    escape: Callable[[str], str]
    bold: tuple[str, str]
    italic: tuple[str, str]
    strike: tuple[str, str]
    code: tuple[str, str]
    link: Callable[[str], tuple[str, str] | None]
    pre: Callable[[str], list[_Open]]
    quote_tag: tuple[str, str] | None  # None: prefix lines with "> "
    quote_prefix: str  # line prefix of a quote without a tag (or inside a quote tag)
    bullet: str
    rule: str
    table_pre: bool


_SAFE_SCHEMES = ("http://", "https://", "tg://", "mailto:", "ftp://")
_LANG_RE = re.compile(r"[^A-Za-z0-9_+#.-]")


def _tg_link(url: str) -> tuple[str, str] | None:
    if not url.lower().startswith(_SAFE_SCHEMES):
        return None
    # Only &, <, > and " need escaping in a double-quoted attribute; the Bot API knows
    # just the &lt; &gt; &amp; &quot; named entities, so "'" stays as it is.
    href = html.escape(url, quote=False).replace('"', "&quot;")
    return f'<a href="{href}">', "</a>"


def _tg_pre(lang: str) -> list[_Open]:
    lang = _LANG_RE.sub("", lang)[:32]
    if lang:
        return [
            _Open("<pre>", "</pre>", pre=True),
            _Open(f'<code class="language-{lang}">', "</code>", pre=True),
        ]
    return [_Open("<pre>", "</pre>", pre=True)]


_SPECS: dict[Markup, _Spec] = {
    Markup.TELEGRAM_HTML: _Spec(
        escape=lambda s: html.escape(s, quote=False),
        bold=("<b>", "</b>"),
        italic=("<i>", "</i>"),
        strike=("<s>", "</s>"),
        code=("<code>", "</code>"),
        link=_tg_link,
        pre=_tg_pre,
        quote_tag=("<blockquote>", "</blockquote>"),
        quote_prefix="│ ",
        bullet="•",
        rule="──────────",
        table_pre=True,
    ),
    Markup.WHATSAPP: _Spec(
        escape=lambda s: s,
        bold=("*", "*"),
        italic=("_", "_"),
        strike=("~", "~"),
        code=("`", "`"),
        link=lambda url: None,
        pre=lambda lang: [_Open("```", "```", pre=True)],
        quote_tag=None,
        quote_prefix="> ",
        bullet="-",
        rule="──────────",
        table_pre=True,
    ),
    Markup.PLAIN: _Spec(
        escape=lambda s: s,
        bold=("", ""),
        italic=("", ""),
        strike=("", ""),
        code=("", ""),
        link=lambda url: None,
        pre=lambda lang: [_Open("", "", pre=True)],
        quote_tag=None,
        quote_prefix="> ",
        bullet="•",
        rule="──────────",
        table_pre=False,
    ),
}


_MAX_QUOTE_DEPTH = 6


class _Renderer:
    """Blocks -> token stream for one markup."""

    def __init__(self, spec: _Spec, max_tag: int | None = None) -> None:
        self.spec = spec
        self.max_tag = max_tag  # longest link markup worth using (a chunk must hold it)
        self.out: list = []
        self.newline = "\n"
        self.spans: set[str] = set()  # span kinds open around the current text
        self.in_link = False
        self.quote_depth = 0

    def text(self, s: str) -> None:
        if s:
            self.out.append(_Txt(s, self.newline))

    def open(self, pair: tuple[str, str], pre: bool = False) -> None:
        self.out.append(_Open(pair[0], pair[1], pre))

    def close(self) -> None:
        self.out.append(_CLOSE)

    def span(self, kind: str, children: list) -> None:
        """``children`` inside a ``kind`` span; a span already open is not reopened.

        ``### **Step 1:** Install`` would otherwise give WhatsApp ``**Step 1:* Install*``
        (and Telegram a redundant ``<b><b>``).
        """
        if kind in self.spans:
            self.inline(children)
            return
        self.spans.add(kind)
        self.open(getattr(self.spec, kind))
        self.inline(children)
        self.close()
        self.spans.discard(kind)

    def inline(self, nodes: list) -> None:
        spec = self.spec
        for node in nodes:
            if isinstance(node, _Text):
                self.text(node.text)
            elif isinstance(node, _Code):
                if self.in_link:
                    self.text(node.text)  # a link cannot contain a code entity
                else:
                    self.open(spec.code)
                    self.text(node.text)
                    self.close()
            elif isinstance(node, _Span):
                self.span(node.kind, node.children)
            elif self.in_link:
                self.inline(node.children)  # a link inside link text: its label only
            else:
                label = _plain_inline(node.children)
                tag = spec.link(node.url)
                if tag is not None and self.max_tag is not None:
                    if utf16_len(tag[0]) + utf16_len(tag[1]) > self.max_tag:
                        tag = None  # a URL too long for a chunk: "text (url)", splittable
                if tag is not None:
                    self.open(tag)
                    self.in_link = True
                    self.inline(node.children)
                    self.in_link = False
                    self.close()
                elif label == node.url or not label.strip():
                    self.text(node.url)
                else:
                    self.inline(node.children)
                    self.text(f" ({node.url})")

    def blocks(self, blocks: list) -> None:
        for index, block in enumerate(blocks):
            if index:
                self.text("\n\n")
            self.block(block)

    def block(self, block) -> None:
        spec = self.spec
        if isinstance(block, _Para):
            self.inline(_parse_inline(block.text))
        elif isinstance(block, _Heading):
            self.span("bold", _parse_inline(block.text))
        elif isinstance(block, _CodeBlock):
            self.code_block(block.lang, block.text)
        elif isinstance(block, _Rule):
            self.text(spec.rule)
        elif isinstance(block, _List):
            for index, item in enumerate(block.items):
                if index:
                    self.text("\n")
                marker = item.marker
                if item.task is not None:
                    marker = "☑" if item.task == "x" else "☐"
                if marker == "•":
                    marker = spec.bullet
                indent = "   " * item.level
                self.text(f"{indent}{marker} ")
                body = item.text.replace("\n", "\n" + indent + "  ")
                self.inline(_parse_inline(body))
        elif isinstance(block, _Quote):
            self.quote_depth += 1
            if spec.quote_tag is not None and self.quote_depth == 1:
                self.open(spec.quote_tag)
                self.blocks(block.blocks)
                self.close()
            elif self.quote_depth > _MAX_QUOTE_DEPTH:
                self.blocks(block.blocks)  # "> > > > ..." on and on: no more prefixes
            else:
                # No quote tag, or a quote inside the quote (Telegram forbids nested
                # blockquotes): prefix every line instead.
                prefix = spec.quote_prefix
                saved = self.newline
                self.newline = saved + prefix
                self.open((prefix, ""))
                self.blocks(block.blocks)
                self.close()
                self.newline = saved
            self.quote_depth -= 1
        elif isinstance(block, _Table):
            self.table(block.rows)

    def code_block(self, lang: str, code: str) -> None:
        opens = self.spec.pre(lang)
        self.out.extend(opens)
        self.text(code)
        self.out.extend([_CLOSE] * len(opens))

    def table(self, rows: list[list[str]]) -> None:
        cells = [[_plain_inline(_parse_inline(c)) for c in row] for row in rows]
        width = max(len(r) for r in cells)
        cells = [r + [""] * (width - len(r)) for r in cells]
        widths = [max(len(r[c]) for r in cells) for c in range(width)]
        lines = [" | ".join(r[c].ljust(widths[c]) for c in range(width)).rstrip() for r in cells]
        lines.insert(1, "-+-".join("-" * w for w in widths))
        if self.spec.table_pre:
            self.code_block("", "\n".join(lines))
        else:
            self.text("\n".join(lines))


def _tokens(markdown: str, markup: Markup, limit: int | None = None) -> list:
    renderer = _Renderer(_SPECS[Markup(markup)], None if limit is None else limit // 2)
    renderer.blocks(_parse_blocks(markdown))
    return renderer.out


# =========================================================================== chunking


@dataclass(slots=True)
class _Atom:
    """One character of text, or one open/close marker, with its rendered form."""

    out: str
    size: int  # UTF-16 units of ``out``
    char: str | None = None  # the source character for text atoms
    open: _Open | None = None
    close: bool = False
    pre: bool = False  # text inside a code block
    level: int = 9  # split preference *before* this atom (1 best, 9 never)


def _atoms(tokens: list, escape: Callable[[str], str]) -> list[_Atom]:
    atoms: list[_Atom] = []
    stack: list[_Open] = []
    for tok in tokens:
        if isinstance(tok, _Open):
            stack.append(tok)
            atoms.append(_Atom(tok.open, utf16_len(tok.open), open=tok))
        elif tok is _CLOSE:
            opened = stack.pop()
            atoms.append(_Atom(opened.close, utf16_len(opened.close), close=True))
        else:
            pre = any(o.pre for o in stack)
            for ch in tok.text:
                out = tok.newline if ch == "\n" else escape(ch)
                atoms.append(_Atom(out, utf16_len(out), char=ch, pre=pre))
    _mark_levels(atoms)
    return atoms


_SENTENCE_END = frozenset(".!?…。！？")


def _mark_levels(atoms: list[_Atom]) -> None:
    """Split preference before each atom: 1 paragraph, 2 line, 3 sentence, 4 space, 5 any.

    Inside a code block whitespace is content like any other character (level 5): an
    indentation run longer than a chunk must be split, never dropped.
    """
    prev: str | None = None
    for index, atom in enumerate(atoms):
        ch = atom.char
        if ch is None:
            atom.level = 5
            prev = None
            continue
        nxt = atoms[index + 1].char if index + 1 < len(atoms) else None
        if ch == "\n" and prev != "\n":
            atom.level = 1 if nxt == "\n" and not atom.pre else 2
        elif ch == " " and prev is not None and prev in _SENTENCE_END:
            atom.level = 3
        elif ch == " " and prev not in (" ", None):
            atom.level = 4
        elif ch.isspace() and not atom.pre:
            atom.level = 8  # inside a whitespace run: split at its start instead
        else:
            atom.level = 5
        prev = ch


def _skip_after(atoms: list[_Atom], pos: int) -> int:
    """First atom of the next chunk after splitting before ``pos`` (drop the separator)."""
    atom = atoms[pos]
    if atom.level == 2 and atom.pre:
        # Drop the one newline between two code lines (keep the next line's
        # indentation); at the very start or end of the block it is kept as content.
        prev_text = pos > 0 and atoms[pos - 1].char is not None
        next_text = pos + 1 < len(atoms) and atoms[pos + 1].char is not None
        return pos + 1 if prev_text and next_text else pos
    if atom.level in (1, 2):
        while pos < len(atoms) and atoms[pos].char == "\n":
            pos += 1
        return pos
    if atom.level in (3, 4) and not atom.pre:
        while pos < len(atoms) and atoms[pos].char == " ":
            pos += 1
        return pos
    return pos


def _emit(atoms: list[_Atom], stack: list[_Open], start: int, end: int) -> str:
    """Render atoms[start:end] with ``stack`` reopened first and whatever is open closed.

    Markers opened and closed with nothing between them are dropped.
    """
    pieces: list[str] = []
    open_stack: list[tuple[_Open, int]] = []  # (marker, index in pieces)

    def push(marker: _Open) -> None:
        open_stack.append((marker, len(pieces)))
        pieces.append(marker.open)

    def pop() -> None:
        marker, at = open_stack.pop()
        if at == len(pieces) - 1:
            pieces.pop()  # empty element
        else:
            pieces.append(marker.close)

    for marker in stack:
        push(marker)
    for atom in atoms[start:end]:
        if atom.open is not None:
            push(atom.open)
        elif atom.close:
            pop()
        else:
            pieces.append(atom.out)
    while open_stack:
        pop()
    return "".join(pieces)


def _content_flags(atoms: list[_Atom]) -> list[bool]:
    """Which atoms make a chunk worth sending.

    Visible characters, and whitespace inside a code block (it is content) unless only
    whitespace follows to the very end.  Other whitespace alone is dropped.
    """
    flags = [False] * len(atoms)
    text_after = False
    for index in range(len(atoms) - 1, -1, -1):
        atom = atoms[index]
        if atom.char is None:
            continue
        if not atom.char.isspace():
            flags[index] = text_after = True
        elif atom.pre and text_after:
            flags[index] = True
    return flags


def _protect_code_blocks(atoms: list[_Atom], limit: int) -> None:
    """Forbid splits inside a code block that fits in one chunk on its own."""
    stack_open = 0  # UTF-16 size of the enclosing markers (reopened + closed if split)
    enclosing: list[_Open] = []
    index = 0
    total = len(atoms)
    while index < total:
        atom = atoms[index]
        if atom.open is not None and atom.open.pre and not any(o.pre for o in enclosing):
            depth = 0
            size = stack_open
            end = index
            while end < total:
                a = atoms[end]
                size += a.size
                if a.open is not None:
                    depth += 1
                elif a.close:
                    depth -= 1
                    if depth == 0:
                        break
                end += 1
            if size <= limit:
                for inner in atoms[index + 1 : end + 1]:
                    inner.level = 9
        if atom.open is not None:
            enclosing.append(atom.open)
            stack_open += utf16_len(atom.open.open) + utf16_len(atom.open.close)
        elif atom.close:
            done = enclosing.pop()
            stack_open -= utf16_len(done.open) + utf16_len(done.close)
        index += 1


def _chunk_atoms(atoms: list[_Atom], limit: int) -> list[str]:
    """Cut atoms into chunks of at most ``limit`` UTF-16 units, each balanced on its own.

    Within the room of one chunk the split goes to the last paragraph break, else the
    last line break, else sentence end, space, any character -- but a better-ranked
    split that would leave the chunk under 30% full gives way to a lower-ranked one
    further on (so a heading is not sent alone).  Sizes always include the closing
    markup the chunk will need.
    """
    _protect_code_blocks(atoms, limit)
    content = _content_flags(atoms)
    # more[k]: something worth sending at or after k (a split before trailing
    # whitespace would only produce an empty chunk).
    more = [False] * (len(atoms) + 1)
    for index in range(len(atoms) - 1, -1, -1):
        more[index] = content[index] or more[index + 1]
    floor = limit * 3 // 10
    chunks: list[str] = []
    stack: list[_Open] = []
    pos = 0
    total = len(atoms)
    while pos < total:
        size = sum(utf16_len(o.open) for o in stack)
        closers = sum(utf16_len(o.close) for o in stack)
        cur = list(stack)
        # level -> (position, chunk size there, stack there); the last one per level wins
        found: dict[int, tuple[int, int, list[_Open]]] = {}
        has_text = False
        fit = pos  # atoms[pos:fit] fit, closers included
        k = pos
        while k < total:
            atom = atoms[k]
            if has_text and atom.level <= 5 and more[k] and size + closers <= limit:
                found[atom.level] = (k, size + closers, list(cur))
            size += atom.size
            if size > limit:
                break
            if atom.open is not None:
                cur.append(atom.open)
                closers += utf16_len(atom.open.close)
            elif atom.close:
                closers -= utf16_len(cur.pop().close)
            elif atom.char is not None and not atom.char.isspace():
                has_text = True
            k += 1
            if size + closers <= limit:
                fit = k
        if k >= total and size + closers <= limit:
            if any(content[pos:total]):
                chunks.append(_emit(atoms, stack, pos, total))
            break
        if found:
            levels = sorted(found)
            level = next((lv for lv in levels if found[lv][1] >= floor), levels[0])
            end, _, end_stack = found[level]
        else:
            # No split point with text before it (a whitespace run inside a code block
            # longer than a chunk, or a tiny limit): take as much as fits, at least one
            # atom, so that nothing is lost.
            end = max(fit, pos + 1)
            end_stack = list(stack)
            for atom in atoms[pos:end]:
                if atom.open is not None:
                    end_stack.append(atom.open)
                elif atom.close:
                    end_stack.pop()
        if any(content[pos:end]):
            chunks.append(_emit(atoms, stack, pos, end))
        pos = _skip_after(atoms, end) if end < total else end
        stack = end_stack
    return chunks


# =========================================================================== public API


# What may make a text more than escaped plain text (see render's fast path).
_UNSAFE_FOR_FAST = re.compile(
    r"[*_~`\[\]<>\\|\t\r\x00-\x08\x0b-\x1f]|://|mailto:|\n\n\n|  |\s$|\s\n|\n\s|\n[^A-Za-z]")


def render(markdown: str, markup: Markup, limit: int) -> list[str]:
    """Convert a model's Markdown to ``markup`` and cut it into chunks ready to send.

    Every chunk is at most ``limit`` UTF-16 code units, markup included, and is balanced
    on its own.  Whitespace-only input gives ``[]``.
    """
    if limit < 1:
        raise ValueError("limit must be positive")
    spec = _SPECS[Markup(markup)]
    if markdown[:1].isascii() and markdown[:1].isalpha() and not _UNSAFE_FOR_FAST.search(
            markdown):
        # Fast path: nothing Markdown could act on (every line starts with a letter, no
        # emphasis/code/link/table characters, no URL, no odd whitespace): the result is
        # the escaped text itself, in one chunk when it fits.
        out = spec.escape(markdown)
        if len(out) <= limit and utf16_len(out) <= limit:
            return [out]
    return _chunk_atoms(_atoms(_tokens(markdown, markup, limit), spec.escape), limit)


def _whole(markdown: str, markup: Markup) -> str:
    spec = _SPECS[markup]
    return _emit(_atoms(_tokens(markdown, markup), spec.escape), [], 0, 10**12)


def to_telegram_html(markdown: str) -> str:
    """Markdown -> Telegram's HTML parse mode (unchunked); all other text escaped."""
    return _whole(markdown, Markup.TELEGRAM_HTML)


def to_whatsapp(markdown: str) -> str:
    """Markdown -> WhatsApp markup (``*bold*``, ``_italic_``, ``~strike~``, ```` ``` ````)."""
    return _whole(markdown, Markup.WHATSAPP)


def to_plain(markdown: str) -> str:
    """Markdown -> readable plain text (markup removed, links as "text (url)")."""
    return _whole(markdown, Markup.PLAIN)


def chunk_text(text: str, limit: int) -> list[str]:
    """Cut already-final text (no conversion) into pieces of at most ``limit`` UTF-16 units.

    Splits at paragraph, then line, then sentence, then word boundaries.
    """
    if limit < 1:
        raise ValueError("limit must be positive")
    return _chunk_atoms(_atoms([_Txt(text)], lambda s: s), limit)
