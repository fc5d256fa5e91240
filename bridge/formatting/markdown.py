"""Markdown parsing: markdown-it-py, CommonMark plus GFM tables and strikethrough.

A few choices of ours are made in its rule chain (:func:`_make_parser`): raw HTML and
entities are text, link reference definitions stay visible text, a bare URL is opaque
to emphasis, a single ``*`` never opens or closes inside a word (``2*3*4``) and an
intraword ``**`` does not span whitespace (``2**3 = 8 and 3**2``).  :func:`parse`
gives markdown-it's tokens as a small tree for the renderers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from markdown_it import MarkdownIt
from markdown_it.rules_block import StateBlock
from markdown_it.rules_inline import StateInline
from markdown_it.rules_inline.state_inline import Delimiter
from markdown_it.token import Token


class _Parser(MarkdownIt):
    """markdown-it that keeps link destinations exactly as written.

    The renderers decide which schemes become links, so a ``javascript:`` link is shown
    as "text (url)" rather than left as raw brackets; and a URL is neither
    percent-encoded nor punycoded behind the user's back.
    """

    # markdown-it's hooks, under markdown-it's names.
    def validateLink(self, url: str) -> bool:
        return True

    def normalizeLink(self, url: str) -> str:
        return url

    def normalizeLinkText(self, link: str) -> str:
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
class Node:
    """A token with the tokens nested inside it (``None`` for a leaf)."""

    tok: Token
    kids: list[Node] | None


def _nest(tokens: list[Token]) -> list[Node]:
    """markdown-it's flat open/close token list -> a tree (cheaper than SyntaxTreeNode)."""
    root: list[Node] = []
    stack: list[list[Node]] = [root]
    for tok in tokens:
        if tok.nesting == 1:
            kids: list[Node] = []
            stack[-1].append(Node(tok, kids))
            stack.append(kids)
        elif tok.nesting == -1:
            stack.pop()
        elif tok.type == "text" and not tok.content:
            continue  # what is left of a delimiter run that became emphasis
        elif tok.type == "image":  # a leaf whose alt text is inline tokens
            stack[-1].append(Node(tok, _nest(tok.children or [])))
        else:
            stack[-1].append(Node(tok, None))
    return root


def inline_nodes(node: Node) -> list[Node]:
    """The inline content of a block (paragraph, heading, table cell) as a tree."""
    for kid in node.kids or ():
        if kid.tok.type == "inline":
            return _nest(kid.tok.children or [])
    return []


def plain_inline(nodes: list[Node]) -> str:
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
            url = link_url(tok)
            text = plain_inline(node.kids) or url
            out.append(text if is_url_text(text, url) else f"{text} ({url})")
        else:
            out.append(plain_inline(node.kids))
    return "".join(out)


def link_url(tok: Token) -> str:
    """The destination of a link or image token."""
    return str(tok.attrs.get("src" if tok.type == "image" else "href", ""))


def is_url_text(text: str, url: str) -> bool:
    """Whether a link's text says its URL already (``<a@b.org>`` is ``mailto:a@b.org``)."""
    return text == url or url == "mailto:" + text


def parse(markdown: str) -> list[Node]:
    """``markdown`` as a tree of markdown-it block tokens."""
    return _nest(_MD.parse(markdown))


def parse_inline(text: str) -> list[Node]:
    """``text`` parsed as inline Markdown only (a table cell outside the table)."""
    return _nest(_MD.parseInline(text)[0].children or [])
