"""Usage and limits in the store: one row per model call, and what the limits counted.

``UsageQueries(store)`` wraps an open :class:`~bridge.store.db.Database` (the ``Store``):
``record_usage`` writes the rows of one turn's calls in one transaction; the totals and
grouped reports read them back.  The ``*_tx`` functions are transaction bodies (see
:mod:`bridge.store.sql`) the caller composes with ``yield from`` inside one
``store.atomically``, so that :mod:`bridge.usage.limits` can check and record an
admission as one transaction.  Times are unix seconds; periods (days, months)
are the caller's business.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

from bridge.store.db import Database
from bridge.store.sql import Body, all_, all_body, dialect, many, one, run, val

GroupBy = Literal["chat", "sender", "model", "provider", "channel", "day"]

# What each --by groups on (fixed SQL, never user text).
_GROUP_SQL: dict[str, str] = {
    "chat": "session_key",
    "sender": "COALESCE(channel || ':' || sender_id, '-')",
    "model": "model_ref",
    "provider": "provider",
    "channel": "channel",
    "day": "strftime('%Y-%m-%d', at, 'unixepoch')",
}
# The same on PostgreSQL, where they differ.
_GROUP_SQL_PG: dict[str, str] = {
    **_GROUP_SQL,
    "day": "to_char(to_timestamp(at) AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
}


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One model call, attributed to the chat (and sender) it served."""

    at: float
    session_key: str
    channel: str
    account: str
    chat_id: str
    chat_kind: str  # direct | group
    thread_id: str | None
    sender_id: str | None
    turn_id: int | None
    purpose: Literal["reply", "compaction"]
    model_ref: str
    provider: str
    input_tokens: int
    output_tokens: int
    reasoning_tokens: int
    cached_tokens: int
    cache_write_tokens: int
    cost_usd: float
    estimated: bool
    answered: bool = True  # False: a failed attempt whose server still reported usage


@dataclass(frozen=True, slots=True)
class UsageTotals:
    """Sums over some usage rows (and the inbound messages of the same chats, when asked)."""

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    estimated_calls: int = 0
    messages: int = 0

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


_SUMS = ("COUNT(*), COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0),"
         " COALESCE(SUM(reasoning_tokens), 0), COALESCE(SUM(cached_tokens), 0),"
         " COALESCE(SUM(cost_usd), 0.0), COALESCE(SUM(estimated), 0)")


def _totals(row: Sequence[Any], messages: int = 0) -> UsageTotals:
    calls, tin, tout, reasoning, cached, cost, estimated = row
    return UsageTotals(int(calls), int(tin), int(tout), int(reasoning), int(cached),
                       float(cost), int(estimated), messages)


def _where(since: float, until: float | None, session_key: str | None,
           sender_id: str | None, provider: str | None, *,
           at: str = "at") -> tuple[str, list[object]]:
    """A WHERE clause (and its parameters) for the window and the filters given; ``at``
    names the time column (``created_at`` for messages)."""
    clauses: list[str] = [f"{at} >= ?"]
    params: list[object] = [since]
    if until is not None:
        clauses.append(f"{at} < ?")
        params.append(until)
    if session_key is not None:
        clauses.append("session_key = ?")
        params.append(session_key)
    if sender_id is not None:
        clauses.append("sender_id = ?")
        params.append(sender_id)
    if provider is not None:
        clauses.append("provider = ?")
        params.append(provider)
    return " AND ".join(clauses), params


# ------------------------------------------------------------- inside a transaction


def usage_sums_tx(*, since: float, until: float | None = None,
                  session_key: str | None = None, sender_id: str | None = None,
                  provider: str | None = None) -> Body[UsageTotals]:
    """Sums of the usage rows matching every given filter, from ``since``."""
    where, params = _where(since, until, session_key, sender_id, provider)
    row = yield one(f"SELECT {_SUMS} FROM usage WHERE {where}", *params)
    return _totals(row)


def spend_sums_tx(*, session_key: str, sender_id: str | None,
                  since: float, day: float) -> Body[tuple[int, float, float]]:
    """(tokens since ``day``, USD since ``day``, USD since ``since``) of a chat (or one
    sender in it), in one pass over the rows from ``since`` (``since <= day``)."""
    where, params = _where(since, None, session_key, sender_id, None)
    row = yield one(
        "SELECT COALESCE(SUM(CASE WHEN at >= ? THEN input_tokens + output_tokens END), 0),"
        " COALESCE(SUM(CASE WHEN at >= ? THEN cost_usd END), 0.0),"
        f" COALESCE(SUM(cost_usd), 0.0) FROM usage WHERE {where}",
        day, day, *params)
    return int(row[0]), float(row[1]), float(row[2])


def admissions_since_tx(session_key: str, sender_id: str | None,
                        since: float) -> Body[int]:
    """How many messages were admitted after ``since``, in the chat (or for one sender
    in it)."""
    where, params = _admission_where(session_key, sender_id, since)
    return int((yield val(f"SELECT COUNT(*) FROM limit_admissions WHERE {where}", *params)))


def admission_at_tx(session_key: str, sender_id: str | None,
                    since: float, index: int) -> Body[float]:
    """When the ``index``-th (0: the oldest) message admitted after ``since`` was."""
    where, params = _admission_where(session_key, sender_id, since)
    at = yield val(f"SELECT at FROM limit_admissions WHERE {where} ORDER BY at"
                   " LIMIT 1 OFFSET ?", *params, index)
    return float(at) if at is not None else since


def _admission_where(session_key: str, sender_id: str | None,
                     since: float) -> tuple[str, tuple[object, ...]]:
    if sender_id is None:
        return "session_key = ? AND at > ?", (session_key, since)
    return "session_key = ? AND sender_id = ? AND at > ?", (session_key, sender_id, since)


def was_admitted_tx(channel: str, account: str, message_id: str) -> Body[bool]:
    """True when this platform message was admitted before (a redelivery)."""
    return (yield one("SELECT 1 FROM limit_admissions WHERE channel = ? AND account = ? AND"
                      " platform_message_id = ?", channel, account, message_id)) is not None


def record_admission_tx(*, channel: str, account: str, message_id: str, session_key: str,
                        sender_id: str | None, at: float) -> Body[None]:
    yield run("INSERT INTO limit_admissions (channel, account, platform_message_id,"
              " session_key, sender_id, at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
              channel, account, message_id, session_key, sender_id, at)


def notice_until_tx(session_key: str, scope: str) -> Body[float | None]:
    """Until when the last limit notice of ``scope`` in this chat holds (None: none)."""
    until = yield val("SELECT until FROM limit_notices WHERE session_key = ? AND scope = ?",
                      session_key, scope)
    return float(until) if until is not None else None


def record_notice_tx(session_key: str, scope: str, kind: str,
                     until: float, now: float) -> Body[None]:
    yield run("INSERT INTO limit_notices (session_key, scope, kind, until, noticed_at)"
              " VALUES (?, ?, ?, ?, ?) ON CONFLICT (session_key, scope) DO UPDATE SET"
              " kind = excluded.kind, until = excluded.until,"
              " noticed_at = excluded.noticed_at", session_key, scope, kind, until, now)


def prune_admissions_tx(before: float) -> Body[int]:
    """Forget admissions older than ``before`` (no message limit looks back that far)."""
    return (yield run("DELETE FROM limit_admissions WHERE at < ?", before))


def lock_chat_tx(session_key: str) -> Body[None]:
    """Serialise the rest of the transaction with every other one that locks this chat.

    SQLite's ``BEGIN IMMEDIATE`` already serialises every write transaction; on
    PostgreSQL a transaction-level advisory lock on the chat makes a read-then-write
    (the limits' admission check) safe across connections and processes."""
    if (yield dialect()) == "postgresql":
        yield val("SELECT pg_advisory_xact_lock(hashtextextended(?, 0))", session_key)


# ------------------------------------------------------------- queries


class UsageQueries:
    """Usage rows and reports over an open store (``UsageQueries(store)``)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def record_usage(self, rows: Sequence[UsageRow]) -> None:
        """Store ``rows`` in one transaction."""
        if not rows:
            return
        params = [(r.at, r.session_key, r.channel, r.account, r.chat_id, r.chat_kind,
                   r.thread_id, r.sender_id, r.turn_id, r.purpose, r.model_ref, r.provider,
                   r.input_tokens, r.output_tokens, r.reasoning_tokens, r.cached_tokens,
                   r.cache_write_tokens, r.cost_usd, int(r.estimated), int(r.answered))
                  for r in rows]

        def tx() -> Body[None]:
            yield many(
                "INSERT INTO usage (at, session_key, channel, account, chat_id, chat_kind,"
                " thread_id, sender_id, turn_id, purpose, model_ref, provider, input_tokens,"
                " output_tokens, reasoning_tokens, cached_tokens, cache_write_tokens,"
                " cost_usd, estimated, answered)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", params)

        await self.db.atomically(tx())

    async def rows(self, *, since: float = 0.0) -> list[UsageRow]:
        """Every row from ``since`` (oldest first): for tests and exports."""
        def read() -> Body[list[UsageRow]]:
            cur = yield all_(
                "SELECT at, session_key, channel, account, chat_id, chat_kind, thread_id,"
                " sender_id, turn_id, purpose, model_ref, provider, input_tokens,"
                " output_tokens, reasoning_tokens, cached_tokens, cache_write_tokens,"
                " cost_usd, estimated, answered FROM usage WHERE at >= ? ORDER BY id",
                since)
            names = [f.name for f in fields(UsageRow)]
            out = []
            for r in cur:
                values: dict[str, Any] = dict(zip(names, r, strict=True))
                values["estimated"] = bool(values["estimated"])
                values["answered"] = bool(values["answered"])
                out.append(UsageRow(**values))
            return out

        return await self.db.read_with(read())

    async def totals(self, *, since: float, until: float | None = None,
                     session_key: str | None = None, sender_id: str | None = None,
                     provider: str | None = None, messages: bool = False) -> UsageTotals:
        """Sums over the matching rows; ``messages``: also count the inbound messages
        answered or queued in the same window (and chat, when one is given)."""
        def read() -> Body[UsageTotals]:
            sums = yield from usage_sums_tx(since=since, until=until, session_key=session_key,
                                            sender_id=sender_id, provider=provider)
            if not messages:
                return sums
            where, params = _where(since, until, session_key, sender_id, None,
                                   at="created_at")
            count = yield val(
                "SELECT COUNT(*) FROM messages WHERE direction = 'in' AND kind = 'chat' AND"
                " status IN ('received', 'processing', 'answered', 'failed') AND " + where,
                *params)
            return UsageTotals(sums.calls, sums.input_tokens, sums.output_tokens,
                               sums.reasoning_tokens, sums.cached_tokens, sums.cost_usd,
                               sums.estimated_calls, int(count))

        return await self.db.read_with(read())

    async def report(self, *, since: float, until: float | None = None,
                     by: GroupBy = "chat") -> list[tuple[str, UsageTotals]]:
        """Totals grouped ``by`` chat, sender, model, provider, channel or day (UTC),
        the largest cost first (days: oldest first)."""
        where, params = _where(since, until, None, None, None)
        order = "grp" if by == "day" else "6 DESC, grp"

        def read() -> Body[list[tuple[str, UsageTotals]]]:
            key = (_GROUP_SQL_PG if (yield dialect()) == "postgresql" else _GROUP_SQL)[by]
            rows = yield all_(f"SELECT {_SUMS}, {key} AS grp FROM usage WHERE {where}"
                              f" GROUP BY grp ORDER BY {order}", *params)
            return [(str(r[7]), _totals(tuple(r)[:7])) for r in rows]

        return await self.db.read_with(read())

    async def provider_spend(self, *, since: float) -> dict[str, float]:
        """USD spent per provider from ``since``."""
        rows = await self.db.read_with(all_body(
            "SELECT provider, COALESCE(SUM(cost_usd), 0.0) FROM usage"
            " WHERE at >= ? GROUP BY provider", since))
        return {str(p): float(c) for p, c in rows}
