"""Property tests of the config edit engine: random JSON5 documents using every syntax
feature, edited at random paths.

The generator writes each document itself and records where every key, value, comma and
comment is, independently of the engine's scanner, so each edit can be checked against
what it may touch: the new text parses (json5) to the old data with the change, bytes
outside the edited span are unchanged, comments outside it survive, unset-then-set round
trips, and an edit that fails validation leaves the file byte-identical.
"""

from __future__ import annotations

import copy
import difflib
import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import json5
import pytest
from hypothesis import HealthCheck, Phase, assume, example, given, settings
from hypothesis import strategies as st

from bridge.config.edit import (
    Change,
    EditResult,
    InvalidEditError,
    apply_edit,
    edit_text,
    format_path,
    merge_changes,
    parse_path,
)

# Reproducible in CI (derandomized, no example database) and a few seconds in all; no
# "explain" phase (slow on these inputs, and the shrunk example says enough).
PHASES = (Phase.explicit, Phase.generate, Phase.shrink)
# EDIT_PROPERTY_EXAMPLES=2000 for a longer hunt on a developer's machine.
EXAMPLES_PER_TEST = int(os.environ.get("EDIT_PROPERTY_EXAMPLES", "40"))
SETTINGS = settings(max_examples=EXAMPLES_PER_TEST, deadline=None, derandomize=True, database=None,
                    phases=PHASES, suppress_health_check=[HealthCheck.too_slow,
                                                          HealthCheck.data_too_large])
FILE_SETTINGS = settings(max_examples=20, deadline=None, derandomize=True, database=None,
                         phases=PHASES,
                         suppress_health_check=[HealthCheck.function_scoped_fixture])
EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "config").glob("*.json5"))
ENV = {"TELEGRAM_BOT_TOKEN": "123456789:AAH-prop-secret-token-abcdefghijklmnop",
       **{k: "sk-prop-secret-key-0123456789" for k in (
           "LOCAL_KEY", "OPENAI_API_KEY", "OPENROUTER_API_KEY", "ANTHROPIC_API_KEY",
           "LITELLM_API_KEY")}}

Path_ = tuple[str | int, ...]


# --------------------------------------------------------------------------- the generator


@dataclass
class Entry:
    """One member or array item as written: where it starts (its key, or the value),
    where its value is, and where the entry ends (past its comma when it has one)."""

    start: int
    value_start: int
    value_end: int
    end: int
    comma: int | None


@dataclass
class Container:
    kind: str  # "object" or "array"
    start: int  # the "{" / "["
    end: int  # past the "}" / "]"
    entries: list[Path_] = field(default_factory=list)


@dataclass
class Doc:
    text: str
    data: Any
    entries: dict[Path_, Entry]
    containers: dict[Path_, Container]
    comments: dict[str, int]  # marker -> position of the comment's start

    def __repr__(self) -> str:  # hypothesis prints the falsifying example
        return f"Doc({self.text!r})"


IDENT_KEYS = st.from_regex(r"\A[A-Za-z_$][A-Za-z0-9_$]{0,5}\Z")
ODD_KEYS = st.sampled_from([
    "my.lab", "-1001234567890", "*", "+15551234567", "7", "a b", 'x"y', "it's", "é",
    "back\\slash", "[x]", "", "true", "null", "new\nline", "été", "ключ",
])
KEYS = st.one_of(IDENT_KEYS, ODD_KEYS)
# (BMP only: the json5 package decodes an escaped surrogate pair as two code points)
STRING_DATA = st.text(st.characters(max_codepoint=0xFFFF, exclude_categories=("Cs",)),
                      max_size=6)


class Writer:
    def __init__(self, draw: Callable[..., Any], nl: str, unit: str) -> None:
        self.draw, self.nl, self.unit = draw, nl, unit
        self.parts: list[str] = []
        self.pos = 0
        self.entries: dict[Path_, Entry] = {}
        self.containers: dict[Path_, Container] = {}
        self.comments: dict[str, int] = {}

    def emit(self, s: str) -> None:
        self.parts.append(s)
        self.pos += len(s)

    def comment(self, *, line: bool, indent: str = "") -> None:
        marker = f"c{len(self.comments)}z"
        self.comments[marker] = self.pos
        if line:
            self.emit(f"// {marker}")
        elif self.draw(st.booleans()):
            self.emit(f"/* {marker} */")
        else:  # a block comment over two lines
            self.emit(f"/* {marker}{self.nl}{indent}   more */")

    def maybe_block(self, before: str = " ", after: str = "") -> None:
        if self.draw(st.integers(0, 2)) == 0:
            self.emit(before)
            self.comment(line=False)
            self.emit(after)

    # ------------------------------------------------------------------ values

    def value(self, path: Path_, depth: int, indent: str) -> Any:
        kind = self.draw(st.sampled_from(
            ["scalar", "scalar", "object", "array"] if depth < 2 else ["scalar"]))
        if kind == "object":
            return self.obj(path, depth, indent)
        if kind == "array":
            return self.arr(path, depth, indent)
        raw, data = self.draw(scalar(self.nl))
        self.emit(raw)
        return data

    def key(self) -> str:
        return self.draw(KEYS)

    def key_text(self, key: str) -> str:
        ident = bool(IDENT.fullmatch(key)) or (key.isidentifier() and not key.isascii())
        style = self.draw(st.sampled_from(["bare", "bare", "double", "single", "escaped"]
                                          if ident else ["double", "single", "escaped"]))
        if style == "bare":
            return key
        if style == "escaped":  # a \uXXXX escape for the first character
            if ident:
                return f"\\u{ord(key[0]):04x}{key[1:]}"
            return json.dumps(key) if not key else '"' + f"\\u{ord(key[0]):04x}" + \
                json.dumps(key[1:])[1:]
        if style == "double":
            return json.dumps(key, ensure_ascii=False)
        return single_quoted(key)

    def container(self, kind: str, path: Path_, depth: int, indent: str) -> Any:
        opener, closer = ("{", "}") if kind == "object" else ("[", "]")
        multiline = self.draw(st.booleans())
        inner = indent + self.unit
        node = Container(kind, self.pos, -1)
        self.containers[path] = node
        self.emit(opener)
        if kind == "object":
            keys = self.draw(st.lists(KEYS, max_size=3, unique=True))
            count = len(keys)
        else:
            keys = []
            count = self.draw(st.integers(0, 3))
        trailing = self.draw(st.booleans())
        data: Any = {} if kind == "object" else []
        line_open = False  # a // comment is open on the current line
        for index in range(count):
            sub: Path_ = (*path, keys[index] if kind == "object" else index)
            if multiline:
                if self.draw(st.integers(0, 4)) == 0:  # a comment line above
                    self.emit(self.nl + inner)
                    self.comment(line=True)
                self.emit(self.nl + inner)
                line_open = False
            else:
                self.emit(self.draw(st.sampled_from([" ", "", "  "])))
                self.maybe_block(before="", after=" ")
            start = self.pos
            if kind == "object":
                self.emit(self.key_text(keys[index]))
                self.maybe_block()  # between key and colon
                self.emit(":" + self.draw(st.sampled_from([" ", "", "\t"])))
                self.maybe_block(before="", after=" ")
            value_start = self.pos
            value = self.value(sub, depth + 1, inner)
            value_end = self.pos
            self.maybe_block()
            comma = None
            if multiline and (index < count - 1 or trailing) and \
                    self.draw(st.integers(0, 7)) == 0:  # the comma on the next line
                self.emit(" ")
                self.comment(line=True)
                self.emit(self.nl + inner)
            if index < count - 1 or trailing:
                comma = self.pos
                self.emit(",")
            end = self.pos
            if multiline and self.draw(st.integers(0, 3)) == 0:  # same-line comment
                self.emit(" ")
                self.comment(line=True)
                line_open = True
            elif multiline and self.draw(st.integers(0, 5)) == 0:
                self.maybe_block()
            self.entries[sub] = Entry(start, value_start, value_end, end, comma)
            node.entries.append(sub)
            if kind == "object":
                data[keys[index]] = value
            else:
                data.append(value)
        if multiline:
            if self.draw(st.integers(0, 4)) == 0:
                self.emit(self.nl + inner)
                self.comment(line=True)
            self.emit(self.nl + indent)
        else:
            if line_open:  # pragma: no cover - only multiline opens // comments
                self.emit(self.nl + indent)
            self.maybe_block(after=" " if not count else "")
            if count:
                self.emit(self.draw(st.sampled_from([" ", ""])))
        self.emit(closer)
        node.end = self.pos
        return data

    def obj(self, path: Path_, depth: int, indent: str) -> Any:
        return self.container("object", path, depth, indent)

    def arr(self, path: Path_, depth: int, indent: str) -> Any:
        return self.container("array", path, depth, indent)


IDENT = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*")


def single_quoted(s: str) -> str:
    body = json.dumps(s, ensure_ascii=False)[1:-1].replace('\\"', '"').replace("'", "\\'")
    return f"'{body}'"


@st.composite
def scalar(draw: Callable[..., Any], nl: str) -> tuple[str, Any]:
    """A JSON5 scalar as written, and what it means."""
    kind = draw(st.sampled_from(["int", "hex", "float", "special", "string", "continued",
                                 "literal"]))
    if kind == "int":
        n = draw(st.integers(-10**12, 10**12))
        return (f"+{n}" if n >= 0 and draw(st.booleans()) else str(n)), n
    if kind == "hex":
        n = draw(st.integers(0, 0xFFFF))
        sign = draw(st.sampled_from(["", "-", "+"]))
        digits = draw(st.sampled_from([f"0x{n:x}", f"0X{n:X}"]))
        return sign + digits, -n if sign == "-" else n
    if kind == "float":
        return draw(st.sampled_from([(".5", 0.5), ("5.", 5.0), ("-.25", -0.25),
                                     ("+1.5e3", 1500.0), ("2E-2", 0.02), ("0.0", 0.0)]))
    if kind == "special":
        return draw(st.sampled_from([("Infinity", math.inf), ("+Infinity", math.inf),
                                     ("-Infinity", -math.inf), ("NaN", math.nan),
                                     ("-NaN", math.nan)]))
    if kind == "literal":
        return draw(st.sampled_from([("true", True), ("false", False), ("null", None)]))
    s = draw(STRING_DATA)
    if kind == "continued":  # a multi-line string with a line continuation
        t = draw(STRING_DATA)
        body = json.dumps(s, ensure_ascii=False)[1:-1]
        return f'"{body}\\{nl}{json.dumps(t, ensure_ascii=False)[1:-1]}"', s + t
    if draw(st.booleans()):
        return json.dumps(s, ensure_ascii=draw(st.booleans())), s
    return single_quoted(s), s


@st.composite
def documents(draw: Callable[..., Any]) -> Doc:
    nl = draw(st.sampled_from(["\n", "\r\n"]))
    unit = draw(st.sampled_from(["  ", "    ", "\t"]))
    w = Writer(draw, nl, unit)
    if draw(st.booleans()):
        w.emit("\ufeff")
    if draw(st.booleans()):
        w.comment(line=True)
        w.emit(nl)
    if draw(st.booleans()):
        w.comment(line=False)
        w.emit(nl)
    data = w.obj((), 0, "")
    if draw(st.booleans()):
        w.emit(nl)
        w.comment(line=True)
    if draw(st.booleans()):  # else the last line has no newline
        w.emit(nl)
    text = "".join(w.parts)
    assert same(json5.loads(text), data), text  # the generator itself is right
    return Doc(text, data, w.entries, w.containers, w.comments)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**15, 10**15)
    | st.floats(allow_nan=True, allow_infinity=True) | STRING_DATA,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=4,
)


# --------------------------------------------------------------------------- helpers


def same(a: Any, b: Any) -> bool:
    """Equal as JSON data (NaN equals NaN; key order ignored; 1 == 1.0 as in JSON)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return bool(a == b)


def applied(data: Any, change: Change) -> Any:
    """What the data must be after ``change`` (written here, not taken from the engine)."""
    data = copy.deepcopy(data)
    node = data
    *parents, last = change.path
    for part in parents:
        if change.remove and (part not in node if isinstance(node, dict)
                              else part >= len(node)):
            return data
        if isinstance(node, dict):
            node = node.setdefault(part, {})
        else:
            node = node[part]
    if change.remove:
        if isinstance(node, dict):
            node.pop(last, None)
        elif isinstance(last, int) and last < len(node):
            del node[last]
    else:
        node[last] = copy.deepcopy(change.value)
    return data


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396, as the RFC writes it."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def is_subsequence(short: str, long: str) -> bool:
    it = iter(long)
    return all(c in it for c in short)


def line_end(text: str, i: int) -> int:
    """Past the newline ending the line that holds ``i`` (or the end of the text)."""
    j = text.find("\n", i)
    return len(text) if j < 0 else j + 1


def survivors(doc: Doc, after: str, lost_between: tuple[int, int] | None) -> None:
    """Every comment outside ``lost_between`` is in ``after``, exactly once."""
    for marker, pos in doc.comments.items():
        if lost_between and lost_between[0] <= pos < lost_between[1]:
            continue
        assert after.count(marker) == 1, (marker, after)


def touched_old_lines(before: str, after: str) -> set[int]:
    """Indices of ``before``'s lines that the edit removed or rewrote (difflib)."""
    a, b = before.split("\n"), after.split("\n")  # (not splitlines: "\x85" is no newline)
    out: set[int] = set()
    for tag, i1, i2, _j1, _j2 in difflib.SequenceMatcher(None, a, b, autojunk=False
                                                         ).get_opcodes():
        if tag in ("replace", "delete"):
            out.update(range(i1, i2))
    return out


def line_of(text: str, i: int) -> int:
    return text.count("\n", 0, i)


def paths_of(doc: Doc, kind: str | None = None) -> list[Path_]:
    return sorted(doc.entries, key=repr) if kind is None else sorted(
        (p for p, c in doc.containers.items() if c.kind == kind), key=repr)


# --------------------------------------------------------------------------- properties


@SETTINGS
@given(documents(), st.data())
def test_set_at_an_existing_path_changes_only_that_value(doc, data):
    assume_some(doc.entries)
    path = data.draw(st.sampled_from(paths_of(doc)))
    value = data.draw(JSON_VALUES)
    change = Change.set(path, value)
    after = edit_text(doc.text, [change])
    assert same(json5.loads(after), applied(doc.data, change)), after
    entry = doc.entries[path]
    # every byte before and after the old value is as it was
    assert after[:entry.value_start] == doc.text[:entry.value_start]
    assert after.endswith(doc.text[entry.value_end:])
    survivors(doc, after, (entry.value_start, entry.value_end))
    # difflib: only the lines the old value was on were rewritten
    first, last = line_of(doc.text, entry.value_start), line_of(doc.text, entry.value_end)
    assert touched_old_lines(doc.text, after) <= set(range(first, last + 1))


@SETTINGS
@given(documents(), st.data())
def test_set_at_a_new_path_only_inserts_into_the_parent(doc, data):
    parent = data.draw(st.sampled_from(paths_of(doc, "object")))
    obj = doc.containers[parent]
    existing = {p[-1] for p in obj.entries}
    new_key = data.draw(KEYS.filter(lambda k: k not in existing))
    deeper = data.draw(st.lists(KEYS, max_size=2))
    value = data.draw(JSON_VALUES)
    change = Change.set((*parent, new_key, *deeper), value)
    after = edit_text(doc.text, [change])
    assert same(json5.loads(after), applied(doc.data, change)), after
    # Nothing removed: the old text is a subsequence of the new, and the insertions are
    # between the parent's last value (where a "," may be added) and its closing brace.
    anchor = doc.entries[obj.entries[-1]].value_end if obj.entries else obj.start + 1
    close = obj.end - 1
    assert after[:anchor] == doc.text[:anchor]
    assert after.endswith(doc.text[close:])
    assert is_subsequence(doc.text, after), after
    survivors(doc, after, None)
    # difflib: the lines from the last entry's value to the brace, nothing else
    first, last = line_of(doc.text, anchor), line_of(doc.text, close)
    assert touched_old_lines(doc.text, after) <= set(range(first, last + 1))


@SETTINGS
@given(documents(), st.data())
def test_unset_removes_the_entry_and_nothing_else(doc, data):
    assume_some(doc.entries)
    path = data.draw(st.sampled_from(paths_of(doc)))
    entry = doc.entries[path]
    parent = doc.containers[path[:-1]]
    index = parent.entries.index(path)
    change = Change.unset(path)
    after = edit_text(doc.text, [change])
    assert same(json5.loads(after), applied(doc.data, change)), after
    # Only removals (the new text is a subsequence of the old) ...
    assert is_subsequence(after, doc.text), after
    # ... from the previous entry's comma (when this is the last entry) to the end of
    # the entry's line.
    prev = doc.entries[parent.entries[index - 1]] if index else None
    lo = prev.value_end if prev is not None else parent.start + 1
    hi = max(line_end(doc.text, entry.end), entry.end)
    hi = min(hi, parent.end - 1)
    assert after[:lo] == doc.text[:lo]
    assert after.endswith(doc.text[hi:])
    # Its comments go with it: inside the entry and on the rest of its line; every
    # other comment stays (also one between the previous comma and this key).
    survivors(doc, after, (entry.start, hi))


@SETTINGS
@given(documents(), st.data())
def test_unset_then_set_gives_the_same_data(doc, data):
    members = [p for p in paths_of(doc) if isinstance(p[-1], str)]
    assume_some(members)
    path = data.draw(st.sampled_from(members))
    old = doc.data
    for part in path:
        old = old[part]
    gone = edit_text(doc.text, [Change.unset(path)])
    back = edit_text(gone, [Change.set(path, old)])
    assert same(json5.loads(back), doc.data), back
    survivors_outside = {m for m, pos in doc.comments.items()
                         if not doc.entries[path].start <= pos < line_end(doc.text,
                                                                          doc.entries[path].end)}
    for marker in survivors_outside:
        assert back.count(marker) == 1, (marker, back)


@st.composite
def patches(draw: Callable[..., Any], data: Any) -> Any:
    """A merge patch: existing keys (recursing into objects), new keys, nulls."""
    out: dict[str, Any] = {}
    keys = list(data) if isinstance(data, dict) else []
    for key in draw(st.lists(st.sampled_from(keys), unique=True, max_size=3)) if keys else []:
        choice = draw(st.integers(0, 3))
        if choice == 0:
            out[key] = None
        elif choice == 1 and isinstance(data[key], dict):
            out[key] = draw(patches(data[key]))
        else:
            out[key] = draw(JSON_VALUES)
    for key in draw(st.lists(KEYS.filter(lambda k: k not in keys), max_size=2, unique=True)):
        out[key] = draw(JSON_VALUES)
    return out


@SETTINGS
@given(documents(), st.data())
def test_merge_patches_mean_what_rfc_7396_says(doc, data):
    patch = data.draw(patches(doc.data))
    after = edit_text(doc.text, merge_changes(patch, doc.data))
    assert same(json5.loads(after), merge_patch(doc.data, patch)), (patch, after)


@SETTINGS
@given(documents(), st.data())
def test_a_sequence_of_edits_means_each_change_in_turn(doc, data):
    text, expected = doc.text, doc.data
    for _ in range(data.draw(st.integers(1, 4))):
        current = json5.loads(text)
        paths = list(walk_paths(current))
        what = data.draw(st.sampled_from(["set", "new", "unset"]))
        if what == "new" or not paths:
            objects = [p for p, v in walk_values(current) if isinstance(v, dict)]
            parent = data.draw(st.sampled_from(objects))
            change = Change.set((*parent, data.draw(KEYS)), data.draw(JSON_VALUES))
        else:
            path = data.draw(st.sampled_from(paths))
            change = Change.unset(path) if what == "unset" else Change.set(
                path, data.draw(JSON_VALUES))
        text = edit_text(text, [change])
        expected = applied(expected, change)
        assert same(json5.loads(text), expected), (change, text)
    # The file's comments outside edited values are never duplicated.
    for marker in doc.comments:
        assert text.count(marker) <= 1


def walk_values(data: Any, path: Path_ = ()) -> Any:
    yield path, data
    if isinstance(data, dict):
        for k, v in data.items():
            yield from walk_values(v, (*path, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from walk_values(v, (*path, i))


def walk_paths(data: Any) -> Any:
    return (p for p, _v in walk_values(data) if p)


def assume_some(items: Any) -> None:
    assume(bool(items))


@settings(max_examples=300, deadline=None, derandomize=True, database=None, phases=PHASES)
@given(st.lists(st.one_of(KEYS, st.text(max_size=5), st.integers(0, 10**6)), min_size=1,
                max_size=4))
@example([" "])  # found: printed as " ", read back as "empty path"
@example(["\n"])
def test_a_printed_path_reads_back_the_same(parts):
    assert parse_path(format_path(parts)) == tuple(parts), format_path(parts)


SECRET_PLACES = st.sampled_from([
    ("models", "providers", "local", "apiKey"), ("channels", "telegram", "botToken"),
    ("channels", "telegram", "webhookSecret"), ("models", "providers", "my.lab", "apiKey"),
    ("models", "providers", "local", "headers", "Authorization"),
    ("models", "providers", "local", "headers", "x-api-key"),
])
SECRETS = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF), min_size=10,
                  max_size=24).filter(lambda s: s not in HARD_FOR_SECRETS and "REDACTED" not in s)
HARD_FOR_SECRETS = (Path(__file__).parent / "test_edit.py").read_text("utf-8")


@SETTINGS
@given(SECRET_PLACES, SECRETS, st.sampled_from(["set", "unset", "other"]))
def test_secret_values_are_never_in_a_diff(where, secret, then):
    from tests.config.test_edit import HARD

    value = f"Bearer {secret}" if where[-1] == "Authorization" else secret
    before = edit_text(HARD, [Change.set(where, value)])
    after = edit_text(before, [{"set": Change.set(where, value + "~"),
                                "unset": Change.unset(where),
                                "other": Change.set("dataDir", "/srv")}[then]])
    diff = EditResult(Path("palaver.json5"), before, after, None,  # type: ignore[arg-type]
                      written=False).diff()
    assert diff
    for shown in (secret, json.dumps(secret, ensure_ascii=False)[1:-1]):
        assert shown not in diff, (where, diff)


# --------------------------------------------------------------------------- real files


SCHEMA_EDITS = st.one_of(
    st.builds(lambda g, b: Change.set(("channels", "telegram", "groups", g, "requireMention"),
                                      b),
              st.sampled_from(["-1001234567890", "*", "-42", "7"]), st.booleans()),
    st.builds(lambda d: Change.set("dataDir", d), st.text("abc/._-", min_size=1, max_size=12)),
    st.builds(lambda n: Change.set("store.retentionDays", n), st.integers(1, 400)),
    st.builds(lambda lv: Change.set("logging.level", lv),
              st.sampled_from(["debug", "info", "warning", "error"])),
    st.just(Change.unset("logging")),
    st.just(Change.unset("channels.telegram.groups")),
    st.builds(lambda p: Change.set("health.port", p), st.integers(1, 65535)),
)
INVALID_EDITS = st.sampled_from([
    Change.set("health.port", 70000),
    Change.set("store.retentionDays", "many"),
    Change.set("channels.telegram.groups.-100.model", "nope/nothing"),
    Change.set("agents.defaults.noSuchKey", 1),
    Change.set("channels.telegram.botToken", "${NOT_SET_IN_THIS_ENV}"),
])


@FILE_SETTINGS
@given(st.sampled_from(EXAMPLES), st.lists(SCHEMA_EDITS, min_size=1, max_size=4))
def test_real_configs_edited_through_apply_edit(tmp_path, example, changes):
    before = example.read_text("utf-8")
    path = tmp_path / "palaver.json5"
    path.write_text(before, "utf-8")
    os.chmod(path, 0o600)
    result = apply_edit(path, changes, env=ENV)
    expected = json5.loads(before)
    for change in changes:
        expected = applied(expected, change)
    assert same(json5.loads(path.read_text("utf-8")), expected)
    assert path.read_text("utf-8") == result.after
    assert (os.stat(path).st_mode & 0o777) == 0o600
    for line in before.splitlines():  # the examples' comment lines all survive
        if line.strip().startswith("//") and "logging" not in line:
            assert line in result.after


@FILE_SETTINGS
@given(st.sampled_from(EXAMPLES), st.lists(SCHEMA_EDITS, max_size=3), INVALID_EDITS)
def test_an_edit_that_fails_validation_leaves_the_file_byte_identical(
        tmp_path, example, changes, invalid):
    path = tmp_path / "palaver.json5"
    path.write_bytes(example.read_bytes())
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    with pytest.raises(InvalidEditError):
        apply_edit(path, [*changes, invalid], env=ENV)
    assert path.read_bytes() == example.read_bytes()
    assert path.stat().st_mtime_ns == 1_000_000_000
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
