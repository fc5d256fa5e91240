"""Renderers: a Markdown syntax tree -> the chunker's stream, for one chat's markup.

Telegram HTML, WhatsApp markup and plain text differ only in a :class:`Spec`.  The
renderer keeps within the Bot API's nesting rules: a span already open is not reopened
(a bold heading with bold inside), a quote inside a quote becomes "│ "-prefixed lines
inside the one ``<blockquote>``, and link text holds no code or link.  Telegram has no
tables: a table becomes aligned plain text in a code block.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from dataclasses import dataclass

from markdown_it.token import Token

from bridge.formatting.chunks import CLOSE, Item, Open, Text, utf16_len
from bridge.formatting.markdown import (
    Node,
    inline_nodes,
    is_url_text,
    link_url,
    parse,
    parse_inline,
    plain_inline,
)
from bridge.ports import Markup


@dataclass(slots=True)
class Spec:
    """How one markup renders each element."""

    escape: Callable[[str], str]
    bold: tuple[str, str]
    italic: tuple[str, str]
    strike: tuple[str, str]
    code: tuple[str, str]
    link: Callable[[str], tuple[str, str] | None]
    pre: Callable[[str], list[Open]]
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


def _tg_pre(lang: str) -> list[Open]:
    lang = _LANG_RE.sub("", lang)[:32]
    if lang:
        return [
            Open("<pre>", "</pre>", pre=True),
            Open(f'<code class="language-{lang}">', "</code>", pre=True),
        ]
    return [Open("<pre>", "</pre>", pre=True)]


SPECS: dict[Markup, Spec] = {
    Markup.TELEGRAM_HTML: Spec(
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
    Markup.WHATSAPP: Spec(
        escape=lambda s: s,
        bold=("*", "*"),
        italic=("_", "_"),
        strike=("~", "~"),
        code=("`", "`"),
        link=lambda url: None,
        pre=lambda lang: [Open("```", "```", pre=True)],
        quote_tag=None,
        quote_prefix="> ",
        bullet="-",
        rule="──────────",
        table_pre=True,
    ),
    Markup.PLAIN: Spec(
        escape=lambda s: s,
        bold=("", ""),
        italic=("", ""),
        strike=("", ""),
        code=("", ""),
        link=lambda url: None,
        pre=lambda lang: [Open("", "", pre=True)],
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
_CELL_SPLIT_RE = re.compile(r"(?<!\\)\|")


class _Renderer:
    """Syntax tree -> token stream for one markup."""

    def __init__(self, spec: Spec, source: str, max_tag: int | None = None) -> None:
        self.spec = spec
        self.source = source  # to see blank lines between blocks
        self._lines: list[str] | None = None
        self.max_tag = max_tag  # longest link markup worth using (a chunk must hold it)
        self.out: list[Item] = []
        self.newline = "\n"
        self.spans: set[str] = set()  # span kinds open around the current text
        self.in_link = False
        self.quote_depth = 0
        self.list_depth = 0

    def text(self, s: str) -> None:
        if s:
            self.out.append(Text(s, self.newline))

    def open(self, pair: tuple[str, str], pre: bool = False) -> None:
        self.out.append(Open(pair[0], pair[1], pre))

    def close(self) -> None:
        self.out.append(CLOSE)

    def span(self, kind: str, children: list[Node]) -> None:
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

    def inline(self, nodes: list[Node]) -> None:
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
                    kids = [Node(node.tok, kids[0].kids)]
                    kind = "strong_open"
                self.span(_SPAN_KINDS[kind], kids)
            elif kind in ("link_open", "image"):
                self.link(node)
            else:
                self.inline(node.kids)

    def link(self, node: Node) -> None:
        kids = node.kids or []
        if self.in_link:
            self.inline(kids)  # a link inside link text: its label only
            return
        url = link_url(node.tok)
        label = plain_inline(kids)
        if not label:
            kids = [Node(Token("text", "", 0, content=url), None)]
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
        elif is_url_text(label, url):
            self.text(label)
        else:
            self.inline(kids)
            self.text(f" ({url})")

    def blocks(self, nodes: list[Node]) -> None:
        prev: Node | None = None
        for node in nodes:
            if prev is not None:
                self.text("\n" if self.list_follows_list(prev, node) else "\n\n")
            self.block(node)
            prev = node

    def list_follows_list(self, prev: Node, node: Node) -> bool:
        """A list right under another one ("- a" then "1. b"): one list to the reader."""
        if prev.tok.type not in _LISTS or node.tok.type not in _LISTS or not node.tok.map:
            return False
        return bool(self.line(node.tok.map[0] - 1).strip(" \t>"))

    def block(self, node: Node) -> None:
        spec = self.spec
        tok = node.tok
        kind = tok.type
        if kind == "paragraph_open":
            self.inline(inline_nodes(node))
        elif kind == "heading_open":
            self.span("bold", inline_nodes(node))
        elif kind in ("fence", "code_block"):
            code = tok.content[:-1] if tok.content.endswith("\n") else tok.content
            info = tok.info.split() if kind == "fence" else []
            self.code_block(info[0] if info else "", code)
        elif kind == "hr":
            self.text(spec.rule)
        elif kind in _LISTS:
            self.list_block(node)
        elif kind == "blockquote_open":
            self.quote(node)
        elif kind == "table_open":
            self.table(node)

    def list_block(self, node: Node) -> None:
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
            first = inline_nodes(kids[0]) if kids and kids[0].tok.type == "paragraph_open" else []
            if first and first[0].tok.type == "text":
                task = _TASK_RE.match(first[0].tok.content)
                if task:
                    marker = "☑" if task.group(1) in "xX" else "☐"
                    rest = first[0].tok.content[task.end() :]
                    first[0] = Node(Token("text", "", 0, content=rest), None)
            self.text(f"{indent}{marker} ")
            for position, kid in enumerate(kids):
                if position:
                    self.text(sep)
                if kid.tok.type == "paragraph_open":
                    # Continuation lines line up under the item's text.
                    self.newline = base + indent + "  "
                    self.inline(first if position == 0 and first else inline_nodes(kid))
                    self.newline = base
                else:
                    self.block(kid)
        self.list_depth -= 1

    def quote(self, node: Node) -> None:
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
        self.out.extend([CLOSE] * len(opens))

    def table(self, node: Node) -> None:
        cells = [
            [plain_inline(inline_nodes(cell)) for cell in row.kids or ()]
            + (self.excess_cells(row) if section.tok.type == "tbody_open" else [])
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


    def excess_cells(self, row: Node) -> list[str]:
        """The cells of a body row beyond the header's count, which GFM drops.

        A model's table with a stray extra cell should lose no text in a chat.
        """
        cols = len(row.kids or ())
        if not row.tok.map:
            return []
        line = self.line(row.tok.map[0])
        if line.count("|") < cols:
            return []
        # The row's own line, less a quote's "> " and indentation.
        raw = _CELL_SPLIT_RE.split(line.lstrip(" \t>").rstrip().strip("|"))
        return [plain_inline(parse_inline(c.strip())) for c in raw[cols:]]

    def line(self, index: int) -> str:
        """Line ``index`` of the source (markdown-it's line numbering)."""
        if self._lines is None:
            self._lines = _LINE_BREAK_RE.split(self.source)
        return self._lines[index] if 0 <= index < len(self._lines) else ""


def tokens(markdown: str, markup: Markup, limit: int | None = None) -> list[Item]:
    """``markdown`` as the chunker's stream for ``markup``.

    With a ``limit``, a link whose markup would take more than half a chunk is written
    as "text (url)" instead, which can be split.
    """
    max_tag = None if limit is None else limit // 2
    renderer = _Renderer(SPECS[Markup(markup)], markdown, max_tag)
    renderer.blocks(parse(markdown))
    return renderer.out
