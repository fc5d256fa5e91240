"""Statement requests: the ``?`` rewrite for PostgreSQL and the In() expansion for SQLite
(pure), and one body run on both backends."""

from __future__ import annotations

import pytest

from bridge.store.sql import (
    Body,
    Dialects,
    In,
    all_,
    dialect,
    one,
    placeholders,
    rowcount_of,
    run,
    to_postgres,
    to_sqlite,
    val,
)


def test_qmark_rewrite_skips_literals_and_comments():
    sql = ("SELECT '?', \"a?\", 'it''s ?' FROM t -- what?\n"
           "WHERE a = ? /* b = ? */ AND c = ?")
    assert len(placeholders(sql)) == 2
    text, args = to_postgres(sql, (1, 2))
    assert text.endswith("WHERE a = $1 /* b = ? */ AND c = $2")
    assert text.startswith("SELECT '?', \"a?\", 'it''s ?' FROM t -- what?\n")
    assert args == (1, 2)


def test_in_list_becomes_any_on_postgresql_and_marks_on_sqlite():
    sql = "UPDATE m SET s = ? WHERE id IN ? AND k NOT IN ? AND x = ?"
    text, args = to_postgres(sql, ("a", In([1, 2, 3]), In(["z"]), 9))
    assert text == "UPDATE m SET s = $1 WHERE id = ANY($2) AND k <> ALL($3) AND x = $4"
    assert args == ("a", [1, 2, 3], ["z"], 9)
    text, args = to_sqlite(sql, ("a", In([1, 2, 3]), In(["z"]), 9))
    assert text == "UPDATE m SET s = ? WHERE id IN (?, ?, ?) AND k NOT IN (?) AND x = ?"
    assert args == ("a", 1, 2, 3, "z", 9)
    # An empty list: SQLite accepts "IN ()", PostgreSQL an empty array.
    assert to_sqlite("SELECT 1 WHERE id IN ?", (In([]),)) == ("SELECT 1 WHERE id IN ()", ())
    assert to_postgres("SELECT 1 WHERE id IN ?", (In([]),))[1] == ([],)


def test_in_must_follow_in_and_counts_must_match():
    with pytest.raises(ValueError, match="must follow IN"):
        to_postgres("SELECT 1 WHERE id = ?", (In([1]),))
    with pytest.raises(ValueError, match="must follow IN"):
        to_sqlite("SELECT 1 WHERE id = ?", (In([1]),))
    with pytest.raises(ValueError, match="placeholders"):
        to_postgres("SELECT ? , ?", (1,))
    # A column whose name ends in "in" is not the keyword.
    with pytest.raises(ValueError, match="must follow IN"):
        to_postgres("SELECT 1 WHERE join ?", (In([1]),))


def test_rowcount_of_command_status():
    assert rowcount_of("UPDATE 3") == 3
    assert rowcount_of("INSERT 0 1") == 1
    assert rowcount_of("DELETE 0") == 0
    assert rowcount_of("CREATE TABLE") == 0


def _body() -> Body[tuple]:
    name = yield dialect()
    yield run("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
    first = yield val("INSERT INTO t (id, v) VALUES (?, ?) RETURNING id", 1, "a?")
    yield run("INSERT INTO t (id, v) VALUES (?, ?), (?, ?)", 2, "b", 3, "c")
    changed = yield run("UPDATE t SET v = v || '!' WHERE id IN ?", In([1, 3]))
    row = yield one("SELECT id, v FROM t WHERE id = ?", 3)
    rows = yield all_("SELECT v FROM t WHERE id NOT IN ? ORDER BY id", In([2]))
    missing = yield val("SELECT v FROM t WHERE id = ?", 99)
    yield run("DROP TABLE t")
    return (name, first, changed, (row["id"], row["v"], row[1]), [r[0] for r in rows],
            missing)


async def test_one_body_runs_the_same_on_both_backends(store):
    name, first, changed, row, values, missing = await store.atomically(_body())
    assert name == store.dialect
    assert (first, changed, row, values, missing) == (1, 2, (3, "c!", "c!"),
                                                      ["a?!", "c!"], None)


async def test_dialects_pick_the_statement_of_the_backend(store):
    both = Dialects(sqlite="SELECT 'lite'", postgresql="SELECT 'pg'")
    got = await store.read_with(_one_value(both))
    assert got == ("pg" if store.dialect == "postgresql" else "lite")


def _one_value(sql: Dialects) -> Body[str]:
    return (yield val(sql))


async def test_a_failing_body_rolls_back_whole(store):
    def body() -> Body[None]:
        yield run("INSERT INTO kv (namespace, key, value, updated_at) VALUES (?, ?, ?, ?)",
                  "t", "k", "v", 1.0)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await store.atomically(body())
    assert await store.kv_get("t", "k") is None


async def test_a_fresh_store_is_writable(store):
    assert await store.check_writable()
