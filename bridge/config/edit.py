"""Edit the config file in place: set, unset and merge at dotted paths.

Every command that changes the config (``palaver config set/unset/patch``, ``palaver
chats model``, owner commands in chat) writes through :func:`apply_edit`.  An edit is a
list of :class:`Change` values applied to the file's own text: only the spans of the
edited values change, so comments, formatting, key order and ``${VAR}`` references
everywhere else stay byte-for-byte as they were.

Why a splicer of our own: the round-trip JSON5 libraries were tried on every example in
``config/`` and on a file using all of JSON5.  json5kit 0.4.0 fails on block comments,
hex numbers and ``$`` in keys; json-five 1.1.2 round-trips everything byte for byte but
installs a top-level module named ``json5``, the same name as the ``json5`` package the
loader depends on (one overwrites the other); json5-document needs Python 3.12.  So this
module holds a small scanner that reports the position of every key, value and comma
(the part the libraries would have given) and splices new text at those positions; the
``json5`` package remains the only parser that decides what the text means: after each
edit the new text is parsed by it and must equal the old data with the change applied,
and it is validated exactly as a load would (:func:`bridge.config.load.load_config_text`).
``tests/config/test_edit_properties.py`` feeds the scanner and splicer random documents
using every JSON5 feature and checks each edit against spans its generator recorded.

Paths: keys separated by ``.``; a key holding ``.``, ``[``, ``]`` or quotes (or an empty
one) is written in brackets as a JSON string, ``models.providers["my.lab"].apiKey``
(the form error messages print); ``[N]`` is an array index.  Everything else is a key as
written, ``channels.telegram.groups.-1001234567890.model``, ``direct.+15551234567``.

The write is atomic (a temporary file in the same directory, fsync, rename; the file's
mode and owner kept; a symlink stays a symlink) and guarded: if the file's bytes changed
since they were read, the edit is refused with :class:`ConcurrentEditError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import json5

from bridge.config.load import ConfigError, load_config_text
from bridge.config.schema import Config
from bridge.secrets import (
    MIN_SECRET_LENGTH,
    REDACTED,
    SECRET_QUERY,
    URL_PASSWORD,
    is_auth_header,
    is_headers_key,
    is_secret_key,
)

__all__ = [
    "Change",
    "ConcurrentEditError",
    "EditError",
    "EditResult",
    "InvalidEditError",
    "apply_edit",
    "apply_edit_async",
    "env_ref",
    "format_path",
    "merge_changes",
    "parse_path",
    "plan_edit",
    "edit_text",
]

PathParts = tuple[str | int, ...]


class EditError(Exception):
    """The edit cannot be made as asked (bad path, not an object, no file...); nothing
    was written.  ``str(err)`` is one line for the user and never holds a secret value."""


class InvalidEditError(EditError):
    """The edited config would not load; nothing was written.  ``error`` is the
    :class:`ConfigError` a load of the new text raised (``error.render()``: the same
    dotted-path lines as ``palaver config validate``)."""

    def __init__(self, error: ConfigError) -> None:
        self.error = error
        super().__init__(error.render())


class ConcurrentEditError(EditError):
    """The file changed since it was read (someone else edited it); nothing was written."""


# --------------------------------------------------------------------------- paths

_BARE = re.compile(r"[^.\[\]\"']+")
_IDENT = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*")


def parse_path(text: str) -> PathParts:
    """``'a.b["c.d"][0].-100'`` -> ``("a", "b", "c.d", 0, "-100")``; :class:`EditError`
    if malformed."""
    parts: list[str | int] = []
    i, n = 0, len(text)
    if not text.strip():
        raise EditError("empty path (expected e.g. channels.telegram.model)")
    expect_key = True
    while i < n:
        c = text[i]
        if c == "[":
            end = _bracket_end(text, i)
            inner = text[i + 1:end].strip()
            if re.fullmatch(r"\d+", inner):
                parts.append(int(inner))
            elif inner[:1] in ('"', "'") and inner[-1:] == inner[:1] and len(inner) >= 2:
                try:
                    key = json5.loads(inner)
                except ValueError:
                    raise EditError(f"bad quoted key {inner} in path {text!r}") from None
                parts.append(str(key))
            else:
                raise EditError(f"expected [N] or [\"key\"] in path {text!r}, got [{inner}]")
            i = end + 1
            expect_key = False
        elif c == ".":
            if expect_key:
                raise EditError(f"empty key in path {text!r}")
            i += 1
            expect_key = True
        else:
            m = _BARE.match(text, i)
            if m is None or not expect_key:
                raise EditError(f"unexpected {c!r} in path {text!r} (quote odd keys: "
                                '["my.key"])')
            parts.append(m.group(0))
            i = m.end()
            expect_key = False
    if expect_key:
        raise EditError(f"path {text!r} ends with '.'")
    return tuple(parts)


def _bracket_end(text: str, start: int) -> int:
    i = start + 1
    quote = None
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = None
        elif c in ('"', "'"):
            quote = c
        elif c == "]":
            return i
        i += 1
    raise EditError(f"unclosed [ in path {text!r}")


def format_path(parts: Sequence[str | int]) -> str:
    """The inverse of :func:`parse_path` (bare keys where possible; one with blanks or
    unprintable characters in brackets, so it reads back the same)."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _BARE.fullmatch(part) and part.isprintable() and " " not in part:
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part, ensure_ascii=False)}]"
    return out


def env_ref(var: str) -> str:
    """``"${VAR}"`` for ``--env VAR``; :class:`EditError` for a bad variable name."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", var or ""):
        raise EditError(f"bad environment variable name {var!r} "
                        "(expected letters, digits and _, e.g. OPENAI_API_KEY)")
    return "${" + var + "}"


# --------------------------------------------------------------------------- changes

_REMOVE = object()


@dataclass(frozen=True, slots=True)
class Change:
    """Set ``path`` to ``value`` (JSON data), or remove it (``remove=True``).

    Setting a path whose parents are missing creates them as objects.  Removing a path
    that is not there changes nothing.
    """

    path: PathParts
    value: Any = None
    remove: bool = False

    @classmethod
    def set(cls, path: str | Sequence[str | int], value: Any) -> Change:
        return cls(_as_parts(path), value)

    @classmethod
    def unset(cls, path: str | Sequence[str | int]) -> Change:
        return cls(_as_parts(path), None, remove=True)

    def describe(self) -> str:
        """``set a.b`` / ``unset a.b`` (never the value: it may be a secret)."""
        return f"{'unset' if self.remove else 'set'} {format_path(self.path)}"


def _as_parts(path: str | Sequence[str | int]) -> PathParts:
    parts = parse_path(path) if isinstance(path, str) else tuple(path)
    if not parts:
        raise EditError("empty path")
    return parts


def merge_changes(patch: Mapping[str, Any], current: Mapping[str, Any] | None = None,
                  base: PathParts = ()) -> list[Change]:
    """The changes that deep-merge ``patch`` into ``current`` (the file's data).

    Objects merge key by key (so the file's comments inside them survive); any other
    value replaces what is there; ``null`` removes the key (JSON merge patch, RFC 7396).
    """
    current = current if isinstance(current, Mapping) else {}
    out: list[Change] = []
    for key, value in patch.items():
        path = (*base, str(key))
        if value is None:
            out.append(Change(path, remove=True))
        elif isinstance(value, Mapping) and isinstance(current.get(key), Mapping):
            # ({} merged into an object leaves it as it is: RFC 7396, not "replace")
            out.extend(merge_changes(value, current[key], path))
        elif isinstance(value, Mapping):
            out.append(Change(path, _drop_nulls(value)))
        else:
            out.append(Change(path, value))
    return out


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    return value


def _apply_to_data(data: Any, change: Change) -> Any:
    """``data`` (parsed JSON) with ``change`` applied (what the text must parse to)."""
    import copy

    data = copy.deepcopy(data)
    node = data
    *parents, last = change.path
    for part in parents:
        if isinstance(node, dict):
            if part not in node:
                if change.remove:
                    return data
                node[part] = {}
            node = node[part]
        else:
            if change.remove and isinstance(part, int) and part >= len(node):
                return data
            node = node[part]
    if change.remove:
        if isinstance(node, dict):
            node.pop(last, None)
        elif isinstance(node, list) and isinstance(last, int) and last < len(node):
            del node[last]
    else:
        node[last] = copy.deepcopy(change.value)
    return data


# --------------------------------------------------------------------------- scanner


@dataclass(slots=True)
class _Node:
    kind: str  # "object", "array", "scalar"
    start: int
    end: int  # exclusive
    members: list[_Member] = field(default_factory=list)
    items: list[_Item] = field(default_factory=list)


@dataclass(slots=True)
class _Member:
    key: str
    key_start: int
    key_end: int
    quoted: bool
    value: _Node
    comma: int | None = None  # index of the comma after the value


@dataclass(slots=True)
class _Item:
    value: _Node
    comma: int | None = None


_PUNCT = set("{}[],:\"'")


class _Scanner:
    """Positions of every key, value and comma of a JSON5 text (meaning is json5's)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.n = len(text)

    def fail(self, i: int, what: str) -> EditError:
        line = self.text.count("\n", 0, i) + 1
        col = i - (self.text.rfind("\n", 0, i) + 1) + 1
        return EditError(f"cannot edit this file: {what} at line {line} column {col}")

    def skip(self, i: int) -> int:
        """Past whitespace and comments."""
        t, n = self.text, self.n
        while i < n:
            c = t[i]
            if c.isspace() or c == "\ufeff":
                i += 1
            elif t.startswith("//", i):
                while i < n and t[i] not in "\n\r\u2028\u2029":
                    i += 1
            elif t.startswith("/*", i):
                end = t.find("*/", i + 2)
                if end < 0:
                    raise self.fail(i, "unclosed /* comment")
                i = end + 2
            else:
                break
        return i

    def document(self) -> _Node:
        i = self.skip(0)
        node = self.value(i)
        if self.skip(node.end) != self.n:
            raise self.fail(self.skip(node.end), "text after the top-level value")
        return node

    def value(self, i: int) -> _Node:
        if i >= self.n:
            raise self.fail(i, "unexpected end of text")
        c = self.text[i]
        if c == "{":
            return self.obj(i)
        if c == "[":
            return self.arr(i)
        if c in "\"'":
            return _Node("scalar", i, self.string_end(i))
        end = self.word_end(i)
        if end == i:
            raise self.fail(i, f"unexpected {c!r}")
        return _Node("scalar", i, end)

    def string_end(self, i: int) -> int:
        quote, j = self.text[i], i + 1
        while j < self.n:
            c = self.text[j]
            if c == "\\":
                j += 2
                continue
            if c == quote:
                return j + 1
            j += 1
        raise self.fail(i, "unclosed string")

    def word_end(self, i: int) -> int:
        t, j = self.text, i
        while j < self.n and not t[j].isspace() and t[j] not in _PUNCT \
                and not t.startswith("//", j) and not t.startswith("/*", j):
            j += 1
        return j

    def obj(self, start: int) -> _Node:
        node = _Node("object", start, start)
        i = self.skip(start + 1)
        while True:
            if i >= self.n:
                raise self.fail(start, "unclosed {")
            if self.text[i] == "}":
                node.end = i + 1
                return node
            if self.text[i] in "\"'":
                key_end = self.string_end(i)
                key = str(json5.loads(self.text[i:key_end]))
                quoted = True
            else:
                key_end = self.word_end(i)
                if key_end == i:
                    raise self.fail(i, "expected a key")
                key = _decode_ident(self.text[i:key_end])
                quoted = False
            j = self.skip(key_end)
            if j >= self.n or self.text[j] != ":":
                raise self.fail(j, "expected ':'")
            value = self.value(self.skip(j + 1))
            member = _Member(key, i, key_end, quoted, value)
            node.members.append(member)
            i = self.skip(value.end)
            if i < self.n and self.text[i] == ",":
                member.comma = i
                i = self.skip(i + 1)
            elif i >= self.n or self.text[i] != "}":
                raise self.fail(i, "expected ',' or '}'")

    def arr(self, start: int) -> _Node:
        node = _Node("array", start, start)
        i = self.skip(start + 1)
        while True:
            if i >= self.n:
                raise self.fail(start, "unclosed [")
            if self.text[i] == "]":
                node.end = i + 1
                return node
            value = self.value(i)
            item = _Item(value)
            node.items.append(item)
            i = self.skip(value.end)
            if i < self.n and self.text[i] == ",":
                item.comma = i
                i = self.skip(i + 1)
            elif i >= self.n or self.text[i] != "]":
                raise self.fail(i, "expected ',' or ']'")


def _decode_ident(raw: str) -> str:
    return re.sub(r"\\u([0-9A-Fa-f]{4})", lambda m: chr(int(m.group(1), 16)), raw)


# --------------------------------------------------------------------------- rendering


@dataclass(frozen=True, slots=True)
class _Style:
    unit: str  # one level of indentation
    newline: str
    quote_keys: bool  # the file quotes even identifier keys


def _style_of(text: str, root: _Node) -> _Style:
    newline = "\r\n" if "\r\n" in text else "\n"
    # The indentation of entries that start a line (not of every line: " * " inside a
    # block comment or a continued string is no indentation unit).
    widths: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        starts = [m.key_start for m in node.members] + [it.value.start for it in node.items]
        stack.extend([m.value for m in node.members] + [it.value for it in node.items])
        for start in starts:
            if not _only_space_before(text, start):
                continue
            indent = _indent_at(text, start)
            if indent.startswith("\t"):
                return _Style("\t", newline, _quotes_keys(root))
            if indent:
                widths.add(len(indent))
    unit = min(widths) if widths else 2
    return _Style(" " * max(1, min(unit, 8)), newline, _quotes_keys(root))


def _quotes_keys(root: _Node) -> bool:
    quoted = bare = 0
    stack = [root]
    while stack:
        node = stack.pop()
        for m in node.members:
            if _IDENT.fullmatch(m.key):
                quoted += m.quoted
                bare += not m.quoted
            stack.append(m.value)
        stack.extend(item.value for item in node.items)
    return quoted > bare


def _render_key(key: str, style: _Style, siblings: Sequence[_Member] = ()) -> str:
    quote = style.quote_keys
    if siblings:
        idents = [m for m in siblings if _IDENT.fullmatch(m.key)]
        if idents:
            quote = sum(m.quoted for m in idents) > len(idents) / 2
    if _IDENT.fullmatch(key) and not quote:
        return key
    return _string(key)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _string(value: str) -> str:
    """A JSON string literal: non-ASCII as is, but a lone surrogate (which has no UTF-8
    form, so the file could not be written) as a ``\\uXXXX`` escape."""
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group(0)):04x}",
                          json.dumps(value, ensure_ascii=False))


def _render(value: Any, style: _Style, indent: str, width: int = 88) -> str:
    """``value`` as JSON5 text; objects and arrays on one line when short enough, else
    one entry a line at ``indent`` + one unit."""
    flat = _render_flat(value, style)
    if len(flat) + len(indent) <= width or not isinstance(value, dict | list) or not value:
        return flat
    inner = indent + style.unit
    nl = style.newline
    if isinstance(value, dict):
        lines = [f"{inner}{_render_key(str(k), style)}: {_render(v, style, inner, width)},"
                 for k, v in value.items()]
        return "{" + nl + nl.join(lines) + nl + indent + "}"
    lines = [f"{inner}{_render(v, style, inner, width)}," for v in value]
    return "[" + nl + nl.join(lines) + nl + indent + "]"


def _render_flat(value: Any, style: _Style) -> str:
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{_render_key(str(k), style)}: {_render_flat(v, style)}"
                                for k, v in value.items()) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_render_flat(v, style) for v in value) + "]"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, int | float | bool) or value is None:
        return json.dumps(value)
    raise EditError(f"cannot write a value of type {type(value).__name__}")


# --------------------------------------------------------------------------- splicing


def _line_start(text: str, i: int) -> int:
    return text.rfind("\n", 0, i) + 1


def _indent_at(text: str, i: int) -> str:
    start = _line_start(text, i)
    line = text[start:i]
    return line[: len(line) - len(line.lstrip(" \t"))]


def _only_space_before(text: str, i: int) -> bool:
    return not text[_line_start(text, i):i].strip()


def _rest_of_line(text: str, i: int) -> int:
    """Past trailing blanks and a ``//`` comment after ``i`` up to and including the
    newline, when only those follow on the line; else ``i`` (past blanks)."""
    j = i
    while True:
        while j < len(text) and text[j] in " \t":
            j += 1
        end = text.find("*/", j + 2) if text.startswith("/*", j) else -1
        if end < 0 or "\n" in text[j:end]:
            break
        j = end + 2  # a block comment closed on this line belongs to the entry
    if text.startswith("//", j):
        while j < len(text) and text[j] not in "\r\n":
            j += 1
    if text.startswith("\r\n", j):
        return j + 2
    if j < len(text) and text[j] == "\n":
        return j + 1
    return j if j == len(text) else i


def _splice(text: str, start: int, end: int, new: str) -> str:
    return text[:start] + new + text[end:]


def _walk(text: str, root: _Node, path: PathParts, *, missing_ok: bool = False
          ) -> tuple[list[_Node], int]:
    """The nodes along ``path`` (root first) and how many parts of it exist (an array
    entry past the end is an error unless ``missing_ok``)."""
    nodes = [root]
    node = root
    for depth, part in enumerate(path):
        if node.kind == "object" and isinstance(part, str):
            member = _find(node, part)
            if member is None:
                return nodes, depth
            node = member.value
        elif node.kind == "array" and isinstance(part, int):
            if part >= len(node.items):
                if missing_ok:
                    return nodes, depth
                raise EditError(f"{format_path(path[:depth + 1])}: the array has "
                                f"{len(node.items)} entries")
            node = node.items[part].value
        else:
            where = format_path(path[:depth]) or "the top level"
            what = {"object": "an object", "array": "an array"}.get(node.kind, "a value")
            raise EditError(f"{where} is {what}, so it has no "
                            f"{'entry' if isinstance(part, int) else 'key'} "
                            f"{format_path(path[depth:depth + 1])!s}")
        nodes.append(node)
    return nodes, len(path)


def _find(node: _Node, key: str) -> _Member | None:
    found = None
    for m in node.members:
        if m.key == key:
            found = m  # the last one wins, as in a parser
    return found


def _set(text: str, root: _Node, style: _Style, path: PathParts, value: Any) -> str:
    nodes, found = _walk(text, root, path)
    if found == len(path):
        target = nodes[-1]
        indent = _indent_at(text, target.start)
        return _splice(text, target.start, target.end, _render(value, style, indent))
    parent = nodes[-1]
    if parent.kind != "object":  # pragma: no cover - _walk raised already
        raise EditError(f"{format_path(path[:found])} is not an object")
    rest = path[found:]
    if any(isinstance(p, int) for p in rest):
        raise EditError(f"{format_path(path)}: array entry {format_path(path[:found + 1])} "
                        "does not exist (set the whole array instead)")
    nested: Any = value
    for part in reversed(rest[1:]):
        nested = {part: nested}
    return _insert_member(text, parent, style, str(rest[0]), nested)


def _insert_member(text: str, obj: _Node, style: _Style, key: str, value: Any) -> str:
    nl = style.newline
    key_text = _render_key(key, style, obj.members)
    close = obj.end - 1  # the "}"
    multiline = "\n" in text[obj.start:obj.end]
    if not obj.members:
        if multiline:
            indent = _indent_at(text, close) + style.unit if _only_space_before(text, close) \
                else _indent_at(text, obj.start) + style.unit
            entry = f"{key_text}: {_render(value, style, indent)},"
            if _only_space_before(text, close):
                at = _line_start(text, close)
                return _splice(text, at, at, f"{indent}{entry}{nl}")
            return _splice(text, close, close, f"{nl}{indent}{entry}{nl}"
                           f"{_indent_at(text, obj.start)}")
        # "{}" or "{ /* comment */ }": the comment stays, the entry goes after it.
        kept = text[obj.start + 1:close].rstrip(" \t")
        flat = f"{kept} {key_text}: {_render_flat(value, style)} "
        line_end = text.find("\n", close)
        line_end = len(text) if line_end < 0 else line_end
        line_len = len(text[_line_start(text, obj.start):line_end]) + len(flat)
        if line_len <= 88:
            return _splice(text, obj.start + 1, close, flat)
        outer = _indent_at(text, obj.start)
        indent = outer + style.unit
        return _splice(text, obj.start + 1, close, f"{kept}{nl}{indent}{key_text}: "
                       f"{_render(value, style, indent)},{nl}{outer}")
    last = obj.members[-1]
    trailing = last.comma is not None
    if multiline and _only_space_before(text, last.key_start):
        indent = _indent_at(text, last.key_start)
        entry = f"{indent}{key_text}: {_render(value, style, indent)}{',' if trailing else ''}"
        after = (last.comma + 1) if last.comma is not None else last.value.end
        line_end = _rest_of_line(text, after)
        if line_end == after:  # something else follows on that line: own line anyway
            new = _splice(text, after, after, f"{nl}{entry}")
        else:
            new = _splice(text, line_end, line_end, f"{entry}{nl}")
            if line_end == len(text):
                new = _splice(text, line_end, line_end, f"{nl}{entry}")
        if not trailing:
            new = _splice(new, last.value.end, last.value.end, ",")
        return new
    # One line (or an odd layout): "{ a: 1 }" -> "{ a: 1, b: 2 }".
    entry = f"{key_text}: {_render_flat(value, style)}"
    if trailing:
        assert last.comma is not None
        return _splice(text, last.comma + 1, last.comma + 1, f" {entry},")
    return _splice(text, last.value.end, last.value.end, f", {entry}")


def _unset(text: str, root: _Node, path: PathParts) -> str:
    nodes, found = _walk(text, root, path, missing_ok=True)
    if found < len(path):
        return text  # nothing to remove
    parent = nodes[-2]
    last = path[-1]
    if parent.kind == "object":
        entries = parent.members
        member = _find(parent, str(last))
        assert member is not None
        index = entries.index(member)
        start, comma = member.key_start, member.comma
        end = member.value.end
    else:
        assert isinstance(last, int)
        entries = parent.items  # type: ignore[assignment]
        index = last
        item = parent.items[last]
        start, comma, end = item.value.start, item.comma, item.value.end
    if comma is not None:
        end = comma + 1
    elif index > 0:  # the last entry without a trailing comma: drop the previous comma
        prev = entries[index - 1]
        assert prev.comma is not None
        if _only_space_before(text, start):
            # keep the previous line's layout: remove ",", then this entry's lines
            line_start = _line_start(text, start)
            stop = _rest_of_line(text, end)
            if stop == end:
                stop = end
            new = _splice(text, line_start, stop, "")
            return _splice(new, prev.comma, prev.comma + 1, "")
        # "{ a: 1, /* c */ b: 2 }" -> "{ a: 1 /* c */ }": a comment between them stays.
        lo = start
        while lo > prev.comma + 1 and text[lo - 1] in " \t":
            lo -= 1
        new = _splice(text, lo, end, "")
        return _splice(new, prev.comma, prev.comma + 1, "")
    if _only_space_before(text, start):
        stop = _rest_of_line(text, end)
        if stop != end:
            return _splice(text, _line_start(text, start), stop, "")
    # Inline: remove the entry and the blanks after it.
    stop = end
    while stop < len(text) and text[stop] in " \t":
        stop += 1
    if comma is None and index == 0:
        # The only entry: "{ a: 1 }" -> "{}".
        open_at = parent.start + 1
        close_at = parent.end - 1
        if not text[open_at:start].strip() and not text[end:close_at].strip():
            return _splice(text, open_at, close_at, "")
    return _splice(text, start, stop, "")


def edit_text(text: str, changes: Iterable[Change]) -> str:
    """``text`` with each change applied in turn (pure; no validation of the meaning).

    Raises :class:`EditError` when a path runs through something that is not an object
    or the text cannot be scanned, ``ValueError`` when ``text`` is not JSON5.
    """
    for change in changes:
        root = _Scanner(text).document()
        if root.kind != "object":
            raise EditError("the config's top level is not an object")
        style = _style_of(text, root)
        if change.remove:
            # Each pass removes the entry a parser sees (the last of duplicate keys);
            # until none is left, so an earlier duplicate does not show through.
            new = _unset(text, root, change.path)
            while isinstance(change.path[-1], str) and new != text:
                text, root = new, _Scanner(new).document()
                new = _unset(text, root, change.path)
            text = new
        else:
            text = _set(text, root, style, change.path, change.value)
    return text


# --------------------------------------------------------------------------- redaction


def masked_text(text: str, *, earlier: str | None = None) -> str:
    """``text`` with every secret value (under a secret-named key, a credential header,
    a URL password or secret query parameter) replaced by ``"[REDACTED]"``; ``${VAR}``
    references stay (they name a variable, not a secret).  With ``earlier`` (the text
    before an edit), a secret that is not one of its secrets reads ``"[REDACTED: new
    value]"``, so a diff still shows that it changed."""
    spans = _secret_spans(text)
    if spans is None:
        return _mask_shapes(text)
    known = None
    if earlier is not None:
        known = {earlier[s:e] for s, e in _secret_spans(earlier) or []}
    for start, end in sorted(spans, reverse=True):
        marker = REDACTED if known is None or text[start:end] in known else _NEW_SECRET
        text = _splice(text, start, end, json.dumps(marker))
    return _mask_shapes(text)


_NEW_SECRET = f"{REDACTED[:-1]}: new value]"


def _secret_spans(text: str) -> list[tuple[int, int]] | None:
    """Where the secret values of ``text`` are (None: it cannot be scanned)."""
    try:
        root = _Scanner(text).document()
    except EditError:
        return None
    spans: list[tuple[int, int]] = []

    def strings_in(node: _Node) -> Iterable[_Node]:
        if node.kind == "scalar":
            yield node
        for m in node.members:
            yield from strings_in(m.value)
        for item in node.items:
            yield from strings_in(item.value)

    def walk(node: _Node, parent_key: str | None) -> None:
        for m in node.members:
            value = m.value
            raw = text[value.start:value.end]
            if is_secret_key(m.key) or (is_headers_key(parent_key) and value.kind == "scalar"
                                        and is_auth_header(m.key, _scalar(raw))):
                spans.extend((s.start, s.end) for s in strings_in(value)
                             if not _is_reference(text[s.start:s.end]))
            else:
                walk(value, m.key)
        for item in node.items:
            walk(item.value, parent_key)

    walk(root, None)
    return spans


def _scalar(raw: str) -> str:
    with contextlib.suppress(ValueError):
        value = json5.loads(raw)
        if isinstance(value, str):
            return value
    return raw


def _is_reference(raw: str) -> bool:
    value = _scalar(raw)
    return isinstance(value, str) and bool(re.fullmatch(r"(\$\{[A-Za-z_][A-Za-z0-9_]*\})+",
                                                         value.strip()))


_TOKEN_SHAPE = re.compile(r"(?<![0-9])[0-9]{3,}:[A-Za-z0-9_-]{30,}")


def _mask_shapes(text: str) -> str:
    text = URL_PASSWORD.sub(rf"\1:{REDACTED}@", text)
    text = SECRET_QUERY.sub(rf"\1{REDACTED}", text)
    return _TOKEN_SHAPE.sub(REDACTED, text)


def _secret_values(data: Any, key: str | None = None) -> list[str]:
    """Literal secret values in parsed data (to scrub from messages).  A placeholder
    equal to a provider id (``apiKey: "lmstudio"``) is left: hiding it would blank every
    ref of that provider, as in the loader's redaction."""
    ignore: set[str] = set()
    if key is None and isinstance(data, dict):
        providers = (data.get("models") or {}).get("providers") if isinstance(
            data.get("models"), dict) else None
        if isinstance(providers, dict):
            ignore = {str(p).casefold() for p in providers}
    return [s for s in _secret_values_in(data, key) if s.casefold() not in ignore]


def _secret_values_in(data: Any, key: str | None = None) -> list[str]:
    out: list[str] = []
    if isinstance(data, dict):
        for k, v in data.items():
            if is_secret_key(str(k)):
                out.extend(_all_strings(v))
            elif is_headers_key(str(k)) and isinstance(v, dict):
                out.extend(str(hv) for hk, hv in v.items()
                           if isinstance(hv, str) and is_auth_header(str(hk), hv))
            else:
                out.extend(_secret_values_in(v, str(k)))
    elif isinstance(data, list):
        for v in data:
            out.extend(_secret_values_in(v, key))
    return [s for s in out if len(s) >= MIN_SECRET_LENGTH and not _is_reference(json.dumps(s))]


def _all_strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _all_strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _all_strings(v)]
    return []


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with each of ``secrets`` (and bot-token shapes) replaced by the marker."""
    for secret in sorted(set(secrets), key=len, reverse=True):
        if secret:
            text = text.replace(secret, REDACTED)
            text = text.replace(json.dumps(secret)[1:-1], REDACTED)
    return _mask_shapes(text)


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class EditResult:
    """What an edit did (or, on a dry run, would do)."""

    path: Path
    before: str
    after: str
    config: Config  # the new config, validated as a load would
    written: bool
    changes: tuple[Change, ...] = ()

    @property
    def changed(self) -> bool:
        return self.before != self.after

    def diff(self) -> str:
        """A unified diff of the file, every secret value redacted (empty: no change)."""
        secrets = [*_data_secrets(self.before), *_data_secrets(self.after)]
        before = masked_text(self.before).splitlines(keepends=True)
        after = masked_text(self.after, earlier=self.before).splitlines(keepends=True)
        lines = list(difflib.unified_diff(before, after, f"{self.path} (before)",
                                          f"{self.path} (after)"))
        out = "".join(line if line.endswith("\n") else line + "\n" for line in lines)
        return scrub(out, secrets)


def _data_secrets(text: str) -> list[str]:
    try:
        return _secret_values(json5.loads(text))
    except ValueError:
        return []


# --------------------------------------------------------------------------- the engine


def _read(path: Path) -> tuple[bytes, str]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise EditError(f"{path}: no config file there (create one with `palaver init`)"
                        ) from None
    except OSError as exc:
        raise EditError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        return raw, raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text ({exc.reason} at byte {exc.start})",
                          file=path) from None


def _parse(text: str, path: Path) -> Any:
    try:
        return json5.loads(text)
    except ValueError:
        # The loader's own message, with line and column.
        load_config_text(text, file=path, env={})
        raise  # pragma: no cover - load_config_text raised a ConfigError


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b if not isinstance(a, int | float) else a == b


def _compute(path: Path, changes: Sequence[Change], env: Mapping[str, str] | None
             ) -> tuple[bytes, str, str, Config]:
    raw, before = _read(path)
    data = _parse(before, path)
    expected = data
    after = before
    for change in changes:
        after = edit_text(after, [change])
        expected = _apply_to_data(expected, change)
    try:
        got = json5.loads(after)
    except ValueError as exc:  # pragma: no cover - a bug in the splicer
        raise EditError(f"internal error: the edited text does not parse ({exc}); "
                        "nothing was written") from None
    if not _same(got, expected):  # pragma: no cover - a bug in the splicer
        raise EditError("internal error: the edited text does not say what was asked; "
                        "nothing was written")
    try:
        config = load_config_text(after, file=path, env=env)
    except ConfigError as exc:
        raise InvalidEditError(_scrubbed(exc, [*_secret_values(expected),
                                               *_secret_values(data)])) from None
    return raw, before, after, config


def _scrubbed(exc: ConfigError, secrets: list[str]) -> ConfigError:
    problems = [type(p)(p.where, scrub(p.message, secrets), p.line, p.column)
                for p in exc.problems]
    return ConfigError(file=exc.file, problems=problems)


def plan_edit(path: str | Path, changes: Sequence[Change], *,
              env: Mapping[str, str] | None = None) -> EditResult:
    """What ``changes`` would make of the file at ``path``, validated, nothing written.

    Raises :class:`InvalidEditError` when the result would not load, :class:`EditError`
    when a path cannot be edited, :class:`ConfigError` when the file is not JSON5.
    """
    path = Path(path)
    _raw, before, after, config = _compute(path, changes, env)
    return EditResult(path, before, after, config, written=False, changes=tuple(changes))


def apply_edit(path: str | Path, changes: Sequence[Change], *,
               env: Mapping[str, str] | None = None, dry_run: bool = False,
               expect_sha256: str | None = None) -> EditResult:
    """Apply ``changes`` to the config file at ``path`` and write it (unless ``dry_run``).

    The new text is validated exactly as a load would (``env``: the environment for
    ``${VAR}``, default ``os.environ``); an invalid edit raises :class:`InvalidEditError`
    and writes nothing.  ``expect_sha256``: the hex SHA-256 of the bytes the caller
    based the edit on (else: the bytes read now); if the file holds other bytes when it
    is written, :class:`ConcurrentEditError` and nothing written.  A running Palaver
    picks the new file up through hot reload.  Blocking: from async code use
    :func:`apply_edit_async`.
    """
    path = Path(path)
    raw, before, after, config = _compute(path, changes, env)
    if expect_sha256 is not None and hashlib.sha256(raw).hexdigest() != expect_sha256:
        raise ConcurrentEditError(f"{path} changed since it was read; nothing was written "
                                  "(run the command again)")
    result = EditResult(path, before, after, config, written=False, changes=tuple(changes))
    if dry_run or not result.changed:
        return result
    _write_guarded(path, raw, after.encode("utf-8"))
    return EditResult(path, before, after, config, written=True, changes=tuple(changes))


async def apply_edit_async(path: str | Path, changes: Sequence[Change], *,
                           env: Mapping[str, str] | None = None, dry_run: bool = False,
                           expect_sha256: str | None = None) -> EditResult:
    """:func:`apply_edit` in a worker thread (for the event loop)."""
    return await asyncio.to_thread(apply_edit, path, changes, env=env, dry_run=dry_run,
                                   expect_sha256=expect_sha256)


def file_sha256(path: str | Path) -> str:
    """The hex SHA-256 of the file's bytes now (for ``expect_sha256``)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _write_guarded(path: Path, expected: bytes, data: bytes) -> None:
    """Replace the file (through a symlink, its target) with ``data`` if it still holds
    ``expected``: temp file in the same directory, fsync, rename, directory fsync."""
    target = path.resolve()
    try:
        st = os.stat(target)
    except OSError as exc:
        raise EditError(f"{path}: cannot write: {exc.strerror or exc}") from None
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.",
                                   suffix=".tmp")
    except OSError as exc:
        raise EditError(f"{path}: cannot write a temporary file next to it: "
                        f"{exc.strerror or exc}") from None
    try:
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fchmod(fh.fileno(), st.st_mode & 0o7777)
                with contextlib.suppress(PermissionError):
                    os.fchown(fh.fileno(), st.st_uid, st.st_gid)
                os.fsync(fh.fileno())
        except OSError as exc:
            raise EditError(f"{path}: cannot write: {exc.strerror or exc}") from None
        # Editors of this module lock the file they read; one that read it before our
        # rename finds other bytes under the path and refuses.
        with _locked(target):
            try:
                now = target.read_bytes()
            except OSError as exc:
                raise EditError(f"{path}: cannot read: {exc.strerror or exc}") from None
            if now != expected:
                raise ConcurrentEditError(f"{path} changed since it was read (someone else "
                                          "edited it); nothing was written")
            os.replace(tmp, target)
        tmp = ""
        with contextlib.suppress(OSError):
            dfd = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    finally:
        if tmp:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


@contextlib.contextmanager
def _locked(target: Path) -> Any:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    try:
        fd = os.open(target, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
