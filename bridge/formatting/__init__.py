"""Markdown from a model -> a chat's markup (Telegram HTML, WhatsApp, plain), in chunks.

Models answer in Markdown.  Telegram wants a small HTML dialect, WhatsApp its own
``*bold*`` markup, and both cap a message's length.  Three steps:

1. markdown-it-py parses the text as CommonMark plus GFM tables and strikethrough
   (:data:`_MD`), with a few choices of ours made in its rule chain: raw HTML and
   entities are text, link reference definitions stay visible text, a bare URL is
   opaque to emphasis, a single ``*`` never opens or closes inside a word (``2*3*4``)
   and an intraword ``**`` does not span whitespace (``2**3 = 8 and 3**2``).
2. A renderer turns the syntax tree into a flat stream of tokens: text, and
   "open"/"close" markers that know their own opening and closing markup (``<b>``/``</b>``,
   ``*``/``*``, ``<pre><code class="language-py">``...).  It keeps within the Bot
   API's nesting rules: a span already open is not reopened (a bold heading with bold
   inside), a quote inside a quote becomes "│ "-prefixed lines inside the one
   ``<blockquote>``, and link text holds no code or link.  Telegram has no tables: a
   table becomes aligned plain text in a code block.
3. :func:`_chunk_atoms` cuts that stream under the limit, preferring a paragraph break, then a
   line break, then a sentence end, then a space; every chunk closes the markup still
   open at its end and the next one reopens it (a code block split in two is closed and
   reopened with its language).  Splits never fall inside a tag or an HTML entity,
   because only text positions are split points.  Whitespace inside code is content:
   it may be split, never dropped (only the newline at a line split is).

Lengths are measured in UTF-16 code units (how Telegram counts) over the whole chunk,
markup included, which is a safe upper bound of what the platform counts.

Public API: :func:`render`, :func:`to_telegram_html`, :func:`to_whatsapp`,
:func:`to_plain`, :func:`chunk_text`, :func:`html_to_plain`, :func:`utf16_len`.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from dataclasses import dataclass

from markdown_it import MarkdownIt
from markdown_it.rules_block import StateBlock
from markdown_it.rules_inline import StateInline
from markdown_it.rules_inline.state_inline import Delimiter
from markdown_it.token import Token

from bridge.ports import Markup

__all__ = [
    "chunk_text",
    "html_to_plain",
    "render",
    "to_plain",
    "to_telegram_html",
    "to_whatsapp",
    "utf16_len",
]


def utf16_len(text: str) -> int:
    """Length of ``text`` in UTF-16 code units (characters outside the BMP count twice)."""
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


# =========================================================================== parsing


class _Parser(MarkdownIt):
    """markdown-it that keeps link destinations exactly as written.

    The renderers decide which schemes become links (:func:`_tg_link`); a
    ``javascript:`` link is shown as "text (url)" rather than left as raw brackets, and
    an URL is neither percent-encoded nor punycoded behind the user's back.
    """

    def validateLink(self, url: str) -> bool:  # noqa: N802 - markdown-it's name
        return True

    def normalizeLink(self, url: str) -> str:  # noqa: N802
        return url

    def normalizeLinkText(self, link: str) -> str:  # noqa: N802
        return link


_SCHEME_RE = re.compile(r"(?:^|[^A-Za-z0-9])(https?|ftp)$", re.IGNORECASE)
_URL_RE = re.compile(r"(?:https?|ftp)://[^\s<>\"'`]+", re.IGNORECASE)
_URL_TRAIL = ".,;:!?*_~)"  # trailing characters that usually belong to the sentence


def _bare_url(state: StateInline, silent: bool) -> bool:
    """A bare ``https://...`` is opaque text: no emphasis or code inside it.

    Runs at the ``:`` of ``://`` (the text rule stops there) with the scheme already in
    the pending text.  Trailing ``.,;:!?*_~`` and an unbalanced ``)`` are usually the
    sentence's; they are left to the parser, except a trailing ``_``/``*`` when the next
    same character further on closes an emphasis (``_read https://x.com/a_b_ now_``).
    Bare URLs stay text: both chats link them on their own.
    """
    pos = state.pos
    src = state.src
    if not src.startswith("://", pos):
        return False
    pending = state.pending
    match = _SCHEME_RE.search(pending)
    if not match:
        return False
    start = pos - len(match.group(1))
    url = _URL_RE.match(src, start, state.posMax)
    if not url:
        return False
    end = full = url.end()
    while end > pos + 3 and src[end - 1] in _URL_TRAIL:
        if src[end - 1] == ")" and src.count("(", start, end) >= src.count(")", start, end):
            break
        end -= 1
    tail = src[end:full]
    for ch in "_*":
        if ch in tail and _next_closes(src, full, state.posMax, ch):
            end += tail.rindex(ch) + 1
            break
    if end <= pos + 3:
        return False
    if not silent:
        state.append_pending(src[pos:end])
    state.pos = end
    return True


def _next_closes(src: str, start: int, stop: int, ch: str) -> bool:
    """Whether the next ``ch`` in ``src[start:stop]`` looks like an emphasis closer."""
    k = src.find(ch, start, stop)
    return k > 0 and not src[k - 1].isspace() and not (k + 1 < stop and src[k + 1].isalnum())


def _emphasis(state: StateInline, silent: bool) -> bool:
    """markdown-it's emphasis rule, except that a single ``*`` follows the ``_`` rules.

    CommonMark lets ``*`` open and close inside a word, which turns ``2*3*4`` and
    ``3*x + 2*y`` into italics; models write those as arithmetic.  A ``**`` run inside a
    word is marked so that :func:`_intraword_strong` can undo it when it spans spaces.
    """
    start = state.pos
    marker = state.src[start]
    if silent or marker not in "_*":
        return False
    scanned = state.scanDelims(start, marker == "*")
    if marker == "*" and scanned.length == 1:
        scanned = state.scanDelims(start, False)
    intraword = marker == "*" and start > 0 and state.src[start - 1].isalnum()
    for _ in range(scanned.length):
        token = state.push("text", "", 0)
        token.content = marker
        if intraword:
            token.meta["intraword"] = True
        state.delimiters.append(
            Delimiter(
                marker=ord(marker),
                length=scanned.length,
                token=len(state.tokens) - 1,
                end=-1,
                open=scanned.can_open,
                close=scanned.can_close,
            )
        )
    state.pos += scanned.length
    return True


def _intraword_strong(state: StateInline) -> None:
    """Unpair a ``**`` opened inside a word whose span holds whitespace (arithmetic)."""
    lists = [state.delimiters] + [
        meta["delimiters"] for meta in state.tokens_meta if meta and "delimiters" in meta
    ]
    tokens = state.tokens
    for delimiters in lists:
        for delim in delimiters:
            if delim.end < 0 or not tokens[delim.token].meta.get("intraword"):
                continue
            closer = delimiters[delim.end].token
            if any(
                tok.type in ("softbreak", "hardbreak") or any(c.isspace() for c in tok.content)
                for tok in tokens[delim.token + 1 : closer]
            ):
                delim.end = -1


_MAX_BLOCK_LEVEL = 18  # markdown-it drops whatever lies deeper than maxNesting (20)


def _too_deep(state: StateBlock, start: int, end: int, silent: bool) -> bool:
    """Past a sane nesting depth, the rest is one paragraph (instead of vanishing)."""
    if silent or state.level < _MAX_BLOCK_LEVEL:
        return False
    content = state.getLines(start, end, state.blkIndent, False).strip()
    state.line = end
    if content:
        state.push("paragraph_open", "p", 1).map = [start, end]
        token = state.push("inline", "", 0)
        token.content = content
        token.map = [start, end]
        token.children = []
        state.push("paragraph_close", "p", -1)
    return True


def _make_parser() -> MarkdownIt:
    md = _Parser("commonmark", {"html": False})
    md.enable(["table", "strikethrough"])
    # "[1]: https://..." lines are a model's visible footnotes, not hidden definitions;
    # "&amp;" is what the model wrote (a chat is not HTML), as before markdown-it.
    md.disable(["reference", "entity"])
    md.block.ruler.before("table", "too_deep", _too_deep)
    md.inline.ruler.after("text", "bare_url", _bare_url)
    md.inline.ruler.at("emphasis", _emphasis)
    md.inline.ruler2.after("balance_pairs", "intraword_strong", _intraword_strong)
    return md


_MD = _make_parser()


@dataclass(slots=True)
class _Node:
    """A token with the tokens nested inside it (``None`` for a leaf)."""

    tok: Token
    kids: list[_Node] | None


def _nest(tokens: list[Token]) -> list[_Node]:
    """markdown-it's flat open/close token list -> a tree (cheaper than SyntaxTreeNode)."""
    root: list[_Node] = []
    stack: list[list[_Node]] = [root]
    for tok in tokens:
        if tok.nesting == 1:
            kids: list[_Node] = []
            stack[-1].append(_Node(tok, kids))
            stack.append(kids)
        elif tok.nesting == -1:
            stack.pop()
        elif tok.type == "text" and not tok.content:
            continue  # what is left of a delimiter run that became emphasis
        elif tok.type == "image":  # a leaf whose alt text is inline tokens
            stack[-1].append(_Node(tok, _nest(tok.children or [])))
        else:
            stack[-1].append(_Node(tok, None))
    return root


def _inline_nodes(node: _Node) -> list[_Node]:
    """The inline content of a block (paragraph, heading, table cell) as a tree."""
    for kid in node.kids or ():
        if kid.tok.type == "inline":
            return _nest(kid.tok.children or [])
    return []


def _plain_inline(nodes: list[_Node]) -> str:
    """Inline nodes as plain text (links as "text (url)")."""
    out: list[str] = []
    for node in nodes:
        tok = node.tok
        if node.kids is None:
            if tok.type in ("softbreak", "hardbreak"):
                out.append("\n")
            else:
                out.append(tok.content)
        elif tok.type in ("link_open", "image"):
            url = _link_url(tok)
            text = _plain_inline(node.kids) or url
            out.append(text if _is_url_text(text, url) else f"{text} ({url})")
        else:
            out.append(_plain_inline(node.kids))
    return "".join(out)


def _link_url(tok: Token) -> str:
    return str(tok.attrs.get("src" if tok.type == "image" else "href", ""))


def _is_url_text(text: str, url: str) -> bool:
    """Whether a link's text says its URL already (``<a@b.org>`` is ``mailto:a@b.org``)."""
    return text == url or url == "mailto:" + text


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


_Token = _Open | _CloseTok | _Txt  # what a renderer emits and the chunker reads


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
_SPAN_KINDS = {"strong_open": "bold", "em_open": "italic", "s_open": "strike"}
_LISTS = ("bullet_list_open", "ordered_list_open")
_TASK_RE = re.compile(r"\[([ xX])\][ \t]+")
_LINE_BREAK_RE = re.compile(r"\r\n?|\n")


class _Renderer:
    """Syntax tree -> token stream for one markup."""

    def __init__(self, spec: _Spec, source: str, max_tag: int | None = None) -> None:
        self.spec = spec
        self.source = source  # to see blank lines between blocks
        self._lines: list[str] | None = None
        self.max_tag = max_tag  # longest link markup worth using (a chunk must hold it)
        self.out: list[_Token] = []
        self.newline = "\n"
        self.spans: set[str] = set()  # span kinds open around the current text
        self.in_link = False
        self.quote_depth = 0
        self.list_depth = 0

    def text(self, s: str) -> None:
        if s:
            self.out.append(_Txt(s, self.newline))

    def open(self, pair: tuple[str, str], pre: bool = False) -> None:
        self.out.append(_Open(pair[0], pair[1], pre))

    def close(self) -> None:
        self.out.append(_CLOSE)

    def span(self, kind: str, children: list[_Node]) -> None:
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

    def inline(self, nodes: list[_Node]) -> None:
        spec = self.spec
        for node in nodes:
            tok = node.tok
            kind = tok.type
            if node.kids is None:
                if kind == "text":
                    self.text(tok.content)
                elif kind in ("softbreak", "hardbreak"):
                    self.text("\n")
                elif kind == "code_inline":
                    if self.in_link:
                        self.text(tok.content)  # a link cannot contain a code entity
                    else:
                        self.open(spec.code)
                        self.text(tok.content)
                        self.close()
                else:
                    self.text(tok.content)
            elif kind in _SPAN_KINDS:
                kids = node.kids
                if kind == "em_open" and len(kids) == 1 and kids[0].tok.type == "strong_open":
                    # "***x***": markdown-it nests <em><strong>; bold outside reads the same
                    # and keeps "*_x_*" for WhatsApp.
                    kids = [_Node(node.tok, kids[0].kids)]
                    kind = "strong_open"
                self.span(_SPAN_KINDS[kind], kids)
            elif kind in ("link_open", "image"):
                self.link(node)
            else:
                self.inline(node.kids)

    def link(self, node: _Node) -> None:
        kids = node.kids or []
        if self.in_link:
            self.inline(kids)  # a link inside link text: its label only
            return
        url = _link_url(node.tok)
        label = _plain_inline(kids)
        if not label:
            kids = [_Node(Token("text", "", 0, content=url), None)]
        tag = self.spec.link(url)
        if tag is not None and self.max_tag is not None:
            if utf16_len(tag[0]) + utf16_len(tag[1]) > self.max_tag:
                tag = None  # a URL too long for a chunk: "text (url)", splittable
        if tag is not None:
            self.open(tag)
            self.in_link = True
            self.inline(kids)
            self.in_link = False
            self.close()
        elif not label.strip():
            self.text(url)
        elif _is_url_text(label, url):
            self.text(label)
        else:
            self.inline(kids)
            self.text(f" ({url})")

    def blocks(self, nodes: list[_Node]) -> None:
        prev: _Node | None = None
        for node in nodes:
            if prev is not None:
                self.text("\n" if self.list_follows_list(prev, node) else "\n\n")
            self.block(node)
            prev = node

    def list_follows_list(self, prev: _Node, node: _Node) -> bool:
        """A list right under another one ("- a" then "1. b"): one list to the reader."""
        if prev.tok.type not in _LISTS or node.tok.type not in _LISTS or not node.tok.map:
            return False
        if self._lines is None:
            self._lines = _LINE_BREAK_RE.split(self.source)  # markdown-it's lines
        line = node.tok.map[0] - 1
        return 0 <= line < len(self._lines) and bool(self._lines[line].strip(" \t>"))

    def block(self, node: _Node) -> None:
        spec = self.spec
        tok = node.tok
        kind = tok.type
        if kind == "paragraph_open":
            self.inline(_inline_nodes(node))
        elif kind == "heading_open":
            self.span("bold", _inline_nodes(node))
        elif kind in ("fence", "code_block"):
            code = tok.content[:-1] if tok.content.endswith("\n") else tok.content
            info = tok.info.split() if kind == "fence" else []
            self.code_block(info[0] if info else "", code)
        elif kind == "hr":
            self.text(spec.rule)
        elif kind in _LISTS:
            self.list(node)
        elif kind == "blockquote_open":
            self.quote(node)
        elif kind == "table_open":
            self.table(node)

    def list(self, node: _Node) -> None:
        spec = self.spec
        items = node.kids or []
        tight = all(
            kid.tok.hidden
            for item in items
            for kid in item.kids or ()
            if kid.tok.type == "paragraph_open"
        )
        sep = "\n" if tight else "\n\n"
        indent = "   " * self.list_depth
        base = self.newline
        self.list_depth += 1
        for index, item in enumerate(items):
            if index:
                self.text(sep)
            kids = item.kids or []
            marker = f"{item.tok.info}." if node.tok.type == "ordered_list_open" else spec.bullet
            first = _inline_nodes(kids[0]) if kids and kids[0].tok.type == "paragraph_open" else []
            if first and first[0].tok.type == "text":
                task = _TASK_RE.match(first[0].tok.content)
                if task:
                    marker = "☑" if task.group(1) in "xX" else "☐"
                    rest = first[0].tok.content[task.end() :]
                    first[0] = _Node(Token("text", "", 0, content=rest), None)
            self.text(f"{indent}{marker} ")
            for position, kid in enumerate(kids):
                if position:
                    self.text(sep)
                if kid.tok.type == "paragraph_open":
                    # Continuation lines line up under the item's text.
                    self.newline = base + indent + "  "
                    self.inline(first if position == 0 and first else _inline_nodes(kid))
                    self.newline = base
                else:
                    self.block(kid)
        self.list_depth -= 1

    def quote(self, node: _Node) -> None:
        spec = self.spec
        kids = node.kids or []
        self.quote_depth += 1
        if spec.quote_tag is not None and self.quote_depth == 1:
            self.open(spec.quote_tag)
            self.blocks(kids)
            self.close()
        elif self.quote_depth > _MAX_QUOTE_DEPTH:
            self.blocks(kids)  # "> > > > ..." on and on: no more prefixes
        else:
            # No quote tag, or a quote inside the quote (Telegram forbids nested
            # blockquotes): prefix every line instead.
            prefix = spec.quote_prefix
            saved = self.newline
            self.newline = saved + prefix
            self.open((prefix, ""))
            self.blocks(kids)
            self.close()
            self.newline = saved
        self.quote_depth -= 1

    def code_block(self, lang: str, code: str) -> None:
        opens = self.spec.pre(lang)
        self.out.extend(opens)
        self.text(code)
        self.out.extend([_CLOSE] * len(opens))

    def table(self, node: _Node) -> None:
        cells = [
            [_plain_inline(_inline_nodes(cell)) for cell in row.kids or ()]
            for section in node.kids or ()
            for row in section.kids or ()
        ]
        width = max(len(r) for r in cells)
        cells = [r + [""] * (width - len(r)) for r in cells]
        widths = [max(len(r[c]) for r in cells) for c in range(width)]
        lines = [" | ".join(r[c].ljust(widths[c]) for c in range(width)).rstrip() for r in cells]
        lines.insert(1, "-+-".join("-" * w for w in widths))
        if self.spec.table_pre:
            self.code_block("", "\n".join(lines))
        else:
            self.text("\n".join(lines))


def _tokens(markdown: str, markup: Markup, limit: int | None = None) -> list[_Token]:
    max_tag = None if limit is None else limit // 2
    renderer = _Renderer(_SPECS[Markup(markup)], markdown, max_tag)
    renderer.blocks(_nest(_MD.parse(markdown)))
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


def _atoms(tokens: list[_Token], escape: Callable[[str], str]) -> list[_Atom]:
    """The token stream as atoms: one per character of text, one per marker."""
    atoms: list[_Atom] = []
    stack: list[_Open] = []
    for tok in tokens:
        if isinstance(tok, _Open):
            stack.append(tok)
            atoms.append(_Atom(tok.open, utf16_len(tok.open), open=tok))
        elif isinstance(tok, _CloseTok):
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
    return _chunks(_tokens(markdown, markup, limit), spec.escape, limit)


def _chunks(tokens: list[_Token], escape: Callable[[str], str], limit: int) -> list[str]:
    """The token stream in chunks: joined directly when it all fits (the usual reply),
    else through the atoms of :func:`_chunk_atoms` (same result, some 50x the work)."""
    whole, size, has_text = _join(tokens, escape)
    if size <= limit:
        return [whole] if has_text else []
    return _chunk_atoms(_atoms(tokens, escape), limit)


def _join(tokens: list[_Token], escape: Callable[[str], str]) -> tuple[str, int, bool]:
    """All of ``tokens`` as one string, as :func:`_emit` would render their atoms.

    Also returns the atoms' total size (UTF-16 units, empty elements included, as the
    chunker counts) and whether there is any visible text.
    """
    pieces: list[str] = []
    open_stack: list[tuple[_Open, int]] = []  # (marker, index in pieces)
    size = 0
    has_text = False
    for tok in tokens:
        if isinstance(tok, _Open):
            open_stack.append((tok, len(pieces)))
            pieces.append(tok.open)
            size += utf16_len(tok.open) + utf16_len(tok.close)
        elif isinstance(tok, _CloseTok):
            marker, at = open_stack.pop()
            if at == len(pieces) - 1:
                pieces.pop()  # empty element
            else:
                pieces.append(marker.close)
        elif tok.text:
            out = escape(tok.text)
            if tok.newline != "\n":
                out = out.replace("\n", tok.newline)
            pieces.append(out)
            size += utf16_len(out)
            has_text = has_text or not tok.text.isspace()
    return "".join(pieces), size, has_text


def _whole(markdown: str, markup: Markup) -> str:
    return _join(_tokens(markdown, markup), _SPECS[markup].escape)[0]


def to_telegram_html(markdown: str) -> str:
    """Markdown -> Telegram's HTML parse mode (unchunked); all other text escaped."""
    return _whole(markdown, Markup.TELEGRAM_HTML)


def to_whatsapp(markdown: str) -> str:
    """Markdown -> WhatsApp markup (``*bold*``, ``_italic_``, ``~strike~``, ```` ``` ````)."""
    return _whole(markdown, Markup.WHATSAPP)


def to_plain(markdown: str) -> str:
    """Markdown -> readable plain text (markup removed, links as "text (url)")."""
    return _whole(markdown, Markup.PLAIN)


_LINK_TAG_RE = re.compile(r'<a href="([^"]*)">(.*?)</a>', re.S)
_TAG_RE = re.compile(r"<[^>]+>")
_unescape = html.unescape  # the parameter of html_to_plain hides the module
_escape = html.escape


def html_to_plain(html: str) -> str:
    """One rendered Telegram-HTML chunk as plain text; links become "text (url)".

    For a chunk Telegram refused to parse: the same words without markup.  A link whose
    text is its URL stays just the URL.
    """

    def link(match: re.Match[str]) -> str:
        url, text = _unescape(match.group(1)), match.group(2)
        plain_text = _unescape(_TAG_RE.sub("", text))
        return text if plain_text == url else f"{text} ({_escape(url)})"

    return _unescape(_TAG_RE.sub("", _LINK_TAG_RE.sub(link, html)))


def chunk_text(text: str, limit: int) -> list[str]:
    """Cut already-final text (no conversion) into pieces of at most ``limit`` UTF-16 units.

    Splits at paragraph, then line, then sentence, then word boundaries.
    """
    if limit < 1:
        raise ValueError("limit must be positive")
    return _chunks([_Txt(text)], lambda s: s, limit)
