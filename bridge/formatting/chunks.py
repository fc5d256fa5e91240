"""The chunker: a renderer's stream of text and markers -> chunks under a length limit.

A renderer (:mod:`bridge.formatting.renderers`) emits :class:`Text` and :class:`Open` /
:data:`CLOSE` markers that know their own opening and closing markup.
:func:`chunk_stream` cuts that stream under the limit, preferring a paragraph break,
then a line break, then a sentence end, then a space; every chunk closes the markup
still open at its end and the next one reopens it (a code block split in two is closed
and reopened with its language).  Splits never fall inside a tag or an HTML entity,
because only text positions are split points.  Whitespace inside code is content: it
may be split, never dropped (only the newline at a line split is).

Lengths are measured in UTF-16 code units (how Telegram counts) over the whole chunk,
markup included, which is a safe upper bound of what the platform counts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


def utf16_len(text: str) -> int:
    """Length of ``text`` in UTF-16 code units (characters outside the BMP count twice)."""
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


@dataclass(frozen=True, slots=True)
class Open:
    """A marker opening an element, with its own opening and closing markup."""

    open: str
    close: str
    pre: bool = False  # inside: code, never a paragraph/sentence split


class Close:
    """The marker closing the innermost open element (one instance: :data:`CLOSE`)."""

    __slots__ = ()


CLOSE = Close()


@dataclass(frozen=True, slots=True)
class Text:
    """Text, unescaped; the chunker escapes it for the markup."""

    text: str
    newline: str = "\n"  # what a newline renders as (prefix-style quotes add "> ")


Item = Open | Close | Text  # what a renderer emits and the chunker reads


@dataclass(slots=True)
class _Atom:
    """One character of text, or one open/close marker, with its rendered form."""

    out: str
    size: int  # UTF-16 units of ``out``
    char: str | None = None  # the source character for text atoms
    open: Open | None = None
    close: bool = False
    pre: bool = False  # text inside a code block
    level: int = 9  # split preference *before* this atom (1 best, 9 never)


def atoms(tokens: list[Item], escape: Callable[[str], str]) -> list[_Atom]:
    """The token stream as atoms: one per character of text, one per marker."""
    atoms: list[_Atom] = []
    stack: list[Open] = []
    for tok in tokens:
        if isinstance(tok, Open):
            stack.append(tok)
            atoms.append(_Atom(tok.open, utf16_len(tok.open), open=tok))
        elif isinstance(tok, Close):
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


def _emit(atoms: list[_Atom], stack: list[Open], start: int, end: int) -> str:
    """Render atoms[start:end] with ``stack`` reopened first and whatever is open closed.

    Markers opened and closed with nothing between them are dropped.
    """
    pieces: list[str] = []
    open_stack: list[tuple[Open, int]] = []  # (marker, index in pieces)

    def push(marker: Open) -> None:
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
    enclosing: list[Open] = []
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


def chunk_atoms(atoms: list[_Atom], limit: int) -> list[str]:
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
    stack: list[Open] = []
    pos = 0
    total = len(atoms)
    while pos < total:
        size = sum(utf16_len(o.open) for o in stack)
        closers = sum(utf16_len(o.close) for o in stack)
        cur = list(stack)
        # level -> (position, chunk size there, stack there); the last one per level wins
        found: dict[int, tuple[int, int, list[Open]]] = {}
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


def chunk_stream(tokens: list[Item], escape: Callable[[str], str], limit: int) -> list[str]:
    """The token stream in chunks of at most ``limit`` UTF-16 units.

    A stream that fits in one chunk (the usual reply) is joined directly; the atoms of
    :func:`chunk_atoms` would give the same string at many times the cost.
    """
    whole, size, has_text = join(tokens, escape)
    if size <= limit:
        return [whole] if has_text else []
    return chunk_atoms(atoms(tokens, escape), limit)


def join(tokens: list[Item], escape: Callable[[str], str]) -> tuple[str, int, bool]:
    """All of ``tokens`` as one string, as :func:`_emit` would render their atoms.

    Also returns the atoms' total size (UTF-16 units, empty elements included, as the
    chunker counts) and whether there is any visible text.
    """
    pieces: list[str] = []
    open_stack: list[tuple[Open, int]] = []  # (marker, index in pieces)
    size = 0
    has_text = False
    for tok in tokens:
        if isinstance(tok, Open):
            open_stack.append((tok, len(pieces)))
            pieces.append(tok.open)
            size += utf16_len(tok.open) + utf16_len(tok.close)
        elif isinstance(tok, Close):
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
