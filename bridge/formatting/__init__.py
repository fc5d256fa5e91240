"""Markdown from a model -> a chat's markup (Telegram HTML, WhatsApp, plain), in chunks.

Models answer in Markdown.  Telegram wants a small HTML dialect, WhatsApp its own
``*bold*`` markup, and both cap a message's length.  Three rooms, one step each:

- :mod:`~bridge.formatting.markdown` parses with markdown-it-py (CommonMark plus GFM
  tables and strikethrough, and a few choices of ours for what models write);
- :mod:`~bridge.formatting.renderers` turns the tree into a stream of text and
  open/close markers for one markup, within the Bot API's nesting rules;
- :mod:`~bridge.formatting.chunks` cuts that stream into balanced chunks of at most a
  limit in UTF-16 code units, at paragraph, line, sentence or word boundaries.

This module is the public face: :func:`render`, :func:`to_telegram_html`,
:func:`to_whatsapp`, :func:`to_plain`, :func:`chunk_text`, :func:`html_to_plain` and
:func:`utf16_len`.
"""

from __future__ import annotations

import html
import re

from bridge.formatting.chunks import Text, chunk_stream, join, utf16_len
from bridge.formatting.renderers import SPECS, tokens
from bridge.ports import Markup

__all__ = [
    "chunk_plain",
    "chunk_text",
    "html_to_plain",
    "render",
    "to_plain",
    "to_telegram_html",
    "to_whatsapp",
    "utf16_len",
]


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
    spec = SPECS[Markup(markup)]
    if markdown[:1].isascii() and markdown[:1].isalpha() and not _UNSAFE_FOR_FAST.search(
            markdown):
        # Fast path: nothing Markdown could act on (every line starts with a letter, no
        # emphasis/code/link/table characters, no URL, no odd whitespace): the result is
        # the escaped text itself, in one chunk when it fits.
        out = spec.escape(markdown)
        if len(out) <= limit and utf16_len(out) <= limit:
            return [out]
    return chunk_stream(tokens(markdown, markup, limit), spec.escape, limit)


def _whole(markdown: str, markup: Markup) -> str:
    return join(tokens(markdown, markup), SPECS[markup].escape)[0]


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
    return chunk_stream([Text(text)], lambda s: s, limit)


def chunk_plain(text: str, limit: int) -> list[str]:
    """:func:`chunk_text` for a message sent as typed (pairing codes, errors): the text
    and each piece trimmed of surrounding whitespace, empty pieces dropped."""
    return [piece.strip() for piece in chunk_text(text.strip(), limit) if piece.strip()]
