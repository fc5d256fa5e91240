"""Statement requests: a transaction body written once for SQLite and PostgreSQL.

A store transaction is a generator that *yields* what it wants run and receives the
result back::

    def body():
        row = yield one("SELECT * FROM sessions WHERE session_key = ?", key)
        if row is None:
            new_id = yield val("INSERT INTO sessions (...) VALUES (?, ?) RETURNING id", ...)
        n = yield run("UPDATE messages SET status = ? WHERE id IN ?", "done", In(ids))
        return ...

The backend drives it: SQLite runs the whole body in one hop to its connection's thread
(``BEGIN IMMEDIATE`` ... ``COMMIT``, as the hot paths always did); PostgreSQL awaits each
statement inside one ``conn.transaction()``.  Bodies compose with ``yield from``.

SQL is written SQLite-style, with ``?`` placeholders.  For PostgreSQL each ``?`` becomes
``$n`` (quoted literals and comments skipped; cached per statement text), and an
``In(values)`` argument after ``IN`` becomes ``= ANY($n)`` (one plan for any length); on
SQLite it expands to ``(?, ?, ...)``.  The few statements that differ per dialect are
written twice, as :class:`Dialects`.
"""

from __future__ import annotations

import functools
from collections.abc import Generator, Iterable, Sequence
from typing import Any, Literal, TypeVar

T = TypeVar("T")

Kind = Literal["val", "one", "all", "run", "many", "dialect"]
DIALECTS = ("sqlite", "postgresql")


class Dialects:
    """One statement written for each backend (``sqlite=``, ``postgresql=``)."""

    __slots__ = ("postgresql", "sqlite")

    def __init__(self, *, sqlite: str, postgresql: str) -> None:
        self.sqlite = sqlite
        self.postgresql = postgresql

    def __repr__(self) -> str:
        return f"Dialects(sqlite={self.sqlite!r}, postgresql={self.postgresql!r})"


class In:
    """A list argument for ``column IN ?`` (``NOT IN ?`` too)."""

    __slots__ = ("values",)

    def __init__(self, values: Iterable[Any]) -> None:
        self.values = tuple(values)

    def __repr__(self) -> str:
        return f"In({list(self.values)!r})"


class Q:
    """One statement request: what to run and what to hand back (see the constructors)."""

    __slots__ = ("args", "kind", "sql")

    def __init__(self, kind: Kind, sql: str | Dialects, args: tuple[Any, ...]) -> None:
        self.kind = kind
        self.sql = sql
        self.args = args

    def text(self, dialect: str) -> str:
        """The statement's SQL for ``dialect`` (still with ``?`` placeholders)."""
        sql = self.sql
        if isinstance(sql, Dialects):
            return sql.postgresql if dialect == "postgresql" else sql.sqlite
        return sql

    def __repr__(self) -> str:
        return f"Q({self.kind}, {self.sql!r}, {self.args!r})"


# A transaction body: yields requests, is sent their results, returns its value.
Body = Generator[Q, Any, T]


def val(sql: str | Dialects, *args: Any) -> Q:
    """The first column of the first row, or None when there is no row."""
    return Q("val", sql, args)


def one(sql: str | Dialects, *args: Any) -> Q:
    """The first row (``row["col"]``, ``row[0]``), or None."""
    return Q("one", sql, args)


def all_(sql: str | Dialects, *args: Any) -> Q:
    """Every row, as a list."""
    return Q("all", sql, args)


def run(sql: str | Dialects, *args: Any) -> Q:
    """Run a statement; the result is the number of rows it changed."""
    return Q("run", sql, args)


def many(sql: str | Dialects, rows: Sequence[Sequence[Any]]) -> Q:
    """Run one statement for each parameter tuple in ``rows`` (no ``In``)."""
    return Q("many", sql, (list(rows),))


def dialect() -> Q:
    """The backend's name (``"sqlite"`` or ``"postgresql"``), for a body's few
    dialect-specific choices."""
    return Q("dialect", "", ())


# ----------------------------------------------------------------- placeholder rewrite


def placeholders(sql: str) -> list[int]:
    """Offsets of the ``?`` placeholders in ``sql``: not inside '...' or "..." literals,
    nor in -- or /* */ comments."""
    out: list[int] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c in "'\"":
            end = sql.find(c, i + 1)
            while end != -1 and end + 1 < n and sql[end + 1] == c:  # doubled quote
                end = sql.find(c, end + 2)
            i = n if end == -1 else end + 1
            continue
        if c == "-" and sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end == -1 else end + 1
            continue
        if c == "/" and sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            i = n if end == -1 else end + 2
            continue
        if c == "?":
            out.append(i)
        i += 1
    return out


# Rewritten statement texts are cached per (statement, shape of its arguments).
_CACHE_MAX = 4096


def _in_positions(args: tuple[Any, ...]) -> tuple[int, ...]:
    return tuple(i for i, a in enumerate(args) if isinstance(a, In))


def _before_in(sql: str, at: int) -> int:
    """Where the ``IN`` keyword just before offset ``at`` starts (ValueError if none)."""
    j = at - 1
    while j >= 0 and sql[j].isspace():
        j -= 1
    if j >= 1 and sql[j - 1:j + 1].upper() == "IN" and (j < 2 or not sql[j - 2].isalnum()
                                                          and sql[j - 2] != "_"):
        return j - 1
    raise ValueError(f"an In() argument must follow IN: {sql!r}")


def _marks(sql: str, arity: int) -> list[int]:
    marks = placeholders(sql)
    if len(marks) != arity:
        raise ValueError(f"{len(marks)} placeholders but {arity} arguments: {sql!r}")
    return marks


@functools.lru_cache(maxsize=_CACHE_MAX)
def _postgres_text(sql: str, arity: int, ins: tuple[int, ...]) -> str:
    parts: list[str] = []
    last = 0
    for number, at in enumerate(_marks(sql, arity), start=1):
        if number - 1 in ins:
            start = _before_in(sql, at)
            head = sql[:start].rstrip()
            negated = head.upper().endswith(" NOT")
            if negated:
                start = len(head) - 3
            parts.append(sql[last:start])
            parts.append(f"<> ALL(${number})" if negated else f"= ANY(${number})")
        else:
            parts.append(sql[last:at])
            parts.append(f"${number}")
        last = at + 1
    parts.append(sql[last:])
    return "".join(parts)


@functools.lru_cache(maxsize=_CACHE_MAX)
def _sqlite_text(sql: str, arity: int, sizes: tuple[tuple[int, int], ...]) -> str:
    expand = dict(sizes)  # argument index -> how many values its In holds
    parts: list[str] = []
    last = 0
    for index, at in enumerate(_marks(sql, arity)):
        parts.append(sql[last:at])
        if index in expand:
            _before_in(sql, at)
            parts.append("(" + ", ".join("?" * expand[index]) + ")")
        else:
            parts.append("?")
        last = at + 1
    parts.append(sql[last:])
    return "".join(parts)


def to_postgres(sql: str, args: tuple[Any, ...]) -> tuple[str, tuple[Any, ...]]:
    """``sql`` with ``$n`` placeholders (``IN ?`` with an In: ``= ANY($n)``) and the
    arguments as asyncpg wants them (an In as a list)."""
    ins = _in_positions(args)
    text = _postgres_text(sql, len(args), ins)
    if ins:
        args = tuple(list(a.values) if isinstance(a, In) else a for a in args)
    return text, args


def to_sqlite(sql: str, args: tuple[Any, ...]) -> tuple[str, tuple[Any, ...]]:
    """``sql`` with each In placeholder expanded to ``(?, ?, ...)``, and flat arguments."""
    ins = _in_positions(args)
    if not ins:
        return sql, args
    text = _sqlite_text(sql, len(args), tuple((i, len(args[i].values)) for i in ins))
    flat: list[Any] = []
    for a in args:
        if isinstance(a, In):
            flat.extend(a.values)
        else:
            flat.append(a)
    return text, tuple(flat)


def rowcount_of(status: str) -> int:
    """Rows changed, from asyncpg's command status (``"UPDATE 3"``, ``"INSERT 0 1"``)."""
    tail = status.rsplit(" ", 1)[-1] if status else ""
    return int(tail) if tail.isdigit() else 0


# ----------------------------------------------------------------- one-statement bodies


def val_body(sql: str | Dialects, *args: Any) -> Body[Any]:
    """A body of one :func:`val` statement."""
    return (yield val(sql, *args))


def one_body(sql: str | Dialects, *args: Any) -> Body[Any]:
    """A body of one :func:`one` statement."""
    return (yield one(sql, *args))


def all_body(sql: str | Dialects, *args: Any) -> Body[list[Any]]:
    """A body of one :func:`all_` statement."""
    return (yield all_(sql, *args))


def run_body(sql: str | Dialects, *args: Any) -> Body[int]:
    """A body of one :func:`run` statement."""
    return (yield run(sql, *args))
