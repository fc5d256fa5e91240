"""Limits at the door: ``limits`` per chat and per sender, checked when a message arrives.

``limits`` is set at the default, channel, group, topic and direct levels; the most
specific block that sets it wins, whole (as for ``model``).  Its fields cap the chat, its
``perSender`` fields each sender within the chat (a chat is a session: a direct chat, a
group, a forum topic):

- ``messagesPerMinute`` / ``messagesPerHour``: messages let through in the last 60 s /
  3600 s (a sliding window, counted from the store);
- ``tokensPerDay``, ``costPerDayUsd``: what the chat's (sender's) model calls used today,
  ``costPerMonthUsd`` this month (UTC), from the usage table.

Over a limit, the first message gets one short notice saying when the limit resets; the
following ones in that window are stored as refused (reason ``limit``) with no reply.
Owners (``channels.<name>.owners``) are never limited, and commands always pass.

The check and the record of an admitted message are one transaction (SQLite: ``BEGIN
IMMEDIATE``; PostgreSQL: under an advisory lock on the chat taken first): two messages
racing for the last slot, from one process or two, do not both pass.  Token and cost caps are known only after a call: the call that crosses one
is answered, the next message is refused.

:meth:`LimitGate.admit` is the one call the door makes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from bridge.commands import is_command
from bridge.config.resolve import chat_chain, is_owner
from bridge.store.sql import Body, one
from bridge.store.usage import (
    admission_at_tx,
    admissions_since_tx,
    lock_chat_tx,
    notice_until_tx,
    prune_admissions_tx,
    record_admission_tx,
    record_notice_tx,
    spend_sums_tx,
    was_admitted_tx,
)
from bridge.usage.periods import day_start, month_start, next_day, next_month

if TYPE_CHECKING:
    from bridge.config.schema import Config, Limits, LimitValues
    from bridge.envelope import ChatAddress, Inbound
    from bridge.store.db import Database

log = logging.getLogger(__name__)

REASON = "limit"  # the reason (and metrics code) of a message refused by a limit
_WINDOWS = {"messagesPerMinute": 60.0, "messagesPerHour": 3600.0}
# Admissions older than the longest window are pruned once per this many admissions.
_PRUNE_EVERY = 500


def limits_for(config: Config, address: ChatAddress, sender_id: str | None) -> Limits | None:
    """The ``limits`` block that applies to a chat: topic, group/direct, channel, then
    ``agents.defaults`` (the first that sets one wins); None when none does."""
    chain = chat_chain(config, address.channel, address.chat_kind.value, address.chat_id,
                        sender_id, address.thread_id)
    for block in chain:
        found = getattr(block, "limits", None)
        if found is not None:
            return found
    return config.agents.defaults.limits


@dataclass(frozen=True, slots=True)
class LimitVerdict:
    """What the door does with a message: let it through, or refuse it (``notice``: the
    one reply to send, None when the sender was told already)."""

    admitted: bool
    limit: str | None = None  # the LimitValues field that was reached
    notice: str | None = None
    resets_at: float | None = None


ADMIT = LimitVerdict(True)


@dataclass(frozen=True, slots=True)
class _Reached:
    limit: str
    value: float
    resets_at: float
    scope: str  # "chat" or "sender:<id>"


class LimitGate:
    """Checks a chat's limits and records what it lets through, in one transaction."""

    def __init__(self, store: Database, config: Callable[[], Config], *,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self._config = config
        self.clock = clock
        self.on_refused: Callable[[str], None] | None = None  # metrics: the limit reached
        self._admitted = 0

    def _applying(self, inbound: Inbound) -> Limits | None:
        """The limits ``inbound`` is subject to (None: commands, owners, no limits)."""
        config = self._config()
        a = inbound.address
        if is_command(inbound.text):
            return None
        limits = limits_for(config, a, inbound.sender_id)
        if limits is None or not _any(limits):
            return None
        if is_owner(config, a.channel, inbound.sender_id, inbound.sender_aliases):
            return None
        return limits

    async def would_admit(self, inbound: Inbound) -> bool:
        """Would :meth:`admit` let ``inbound`` through now?  Reads only (for the door's
        ``admits``: a channel need not download the media of a message to be refused)."""
        limits = self._applying(inbound)
        if limits is None:
            return True
        key, now = str(inbound.session_key), self.clock()

        def read() -> Body[bool]:
            return (yield from _reached(limits, key, inbound.sender_id, now)) is None

        return await self.store.read_with(read())

    async def admit(self, inbound: Inbound) -> LimitVerdict:
        """Let ``inbound`` through, or refuse it because a limit of its chat is reached."""
        limits = self._applying(inbound)
        if limits is None:
            return ADMIT
        a = inbound.address
        key = str(inbound.session_key)
        now = self.clock()
        self._admitted += 1
        prune = self._admitted % _PRUNE_EVERY == 0

        def tx() -> Body[LimitVerdict]:
            yield from lock_chat_tx(key)  # PostgreSQL: one admission of this chat at a time
            if (yield from _stored(a.channel, a.account, inbound.message_id)) or (
                    yield from was_admitted_tx(a.channel, a.account, inbound.message_id)):
                return ADMIT  # a redelivery: decided the first time
            reached = yield from _reached(limits, key, inbound.sender_id, now)
            if reached is None:
                yield from record_admission_tx(channel=a.channel, account=a.account,
                                               message_id=inbound.message_id,
                                               session_key=key, sender_id=inbound.sender_id,
                                               at=now)
                if prune:
                    yield from prune_admissions_tx(now - max(_WINDOWS.values()))
                return ADMIT
            until = yield from notice_until_tx(key, reached.scope)
            if until is not None and until > now:
                return LimitVerdict(False, reached.limit, None, reached.resets_at)
            yield from record_notice_tx(key, reached.scope, reached.limit, reached.resets_at,
                                        now)
            # In a group the notice goes to everyone: it names whom a sender's limit stops.
            who = inbound.sender_name if a.chat_kind.value == "group" else None
            return LimitVerdict(False, reached.limit, notice_text(reached, now, who=who),
                                reached.resets_at)

        verdict = await self.store.atomically(tx())
        if not verdict.admitted:
            if verdict.notice is not None:
                log.info("limit %s reached in %s (sender %s); told once, refused until %s",
                         verdict.limit, key, inbound.sender_id,
                         _utc(verdict.resets_at or now, "%Y-%m-%d %H:%M UTC"))
            if self.on_refused is not None and verdict.limit is not None:
                try:
                    self.on_refused(verdict.limit)
                except Exception:
                    log.debug("limit refusal observer failed", exc_info=True)
        return verdict


def _any(limits: Limits) -> bool:
    return _set(limits) or (limits.perSender is not None and _set(limits.perSender))


def _set(values: LimitValues) -> bool:
    return any(getattr(values, name) is not None for name in (
        "messagesPerMinute", "messagesPerHour", "tokensPerDay", "costPerDayUsd",
        "costPerMonthUsd"))


def _stored(channel: str, account: str, message_id: str) -> Body[bool]:
    return (yield one("SELECT 1 FROM messages WHERE direction = 'in' AND channel = ? AND"
                      " account = ? AND platform_message_id = ?",
                      channel, account, message_id)) is not None


def _reached(limits: Limits, key: str, sender_id: str | None,
             now: float) -> Body[_Reached | None]:
    """The reached limit that resets last (the chat's or the sender's), or None."""
    found: list[_Reached] = []
    scopes: list[tuple[LimitValues, str | None, str]] = [(limits, None, "chat")]
    if limits.perSender is not None:
        scopes.append((limits.perSender, sender_id, f"sender:{sender_id}"))
    for values, sender, scope in scopes:
        for name, window in _WINDOWS.items():
            cap = getattr(values, name)
            if cap is None:
                continue
            since = now - window
            count = yield from admissions_since_tx(key, sender, since)
            if count >= cap:
                # Free again when enough of them have left the window.
                oldest_kept = yield from admission_at_tx(key, sender, since, count - cap)
                found.append(_Reached(name, cap, oldest_kept + window, scope))
        if values.tokensPerDay is None and values.costPerDayUsd is None \
                and values.costPerMonthUsd is None:
            continue
        today = day_start(now)
        since = month_start(now) if values.costPerMonthUsd is not None else today
        tokens, day_usd, month_usd = yield from spend_sums_tx(
            session_key=key, sender_id=sender, since=since, day=today)
        for name, used, resets in (("tokensPerDay", tokens, next_day(now)),
                                   ("costPerDayUsd", day_usd, next_day(now)),
                                   ("costPerMonthUsd", month_usd, next_month(now))):
            cap = getattr(values, name)
            if cap is not None and used >= cap:
                found.append(_Reached(name, cap, resets, scope))
    return max(found, key=lambda r: r.resets_at) if found else None


def _what(reached: _Reached, who: str | None) -> str:
    value = reached.value
    words = {
        "messagesPerMinute": f"{value:g} messages a minute",
        "messagesPerHour": f"{value:g} messages an hour",
        "tokensPerDay": f"{value:,.0f} tokens a day",
        "costPerDayUsd": f"${value:.2f} a day",
        "costPerMonthUsd": f"${value:.2f} a month",
    }[reached.limit]
    if not reached.scope.startswith("sender:"):
        return f"{words} in this chat"
    name = " ".join((who or "").split())[:40]
    return f"{words} for {name or 'you'} in this chat"


def notice_text(reached: _Reached, now: float, *, who: str | None = None) -> str:
    """The one short notice: which limit (whose, in a group), and when it resets."""
    return (f"Usage limit reached ({_what(reached, who)}). "
            f"I'll answer again {when(reached.resets_at, now)}.")


def when(resets_at: float, now: float) -> str:
    """``in 12 min (14:32 UTC)``, ``in 5 h (00:00 UTC)``, ``on 2027-01-01 (UTC)``."""
    left = max(0.0, resets_at - now)
    if left < 90:
        return f"in {max(1, round(left))} s"
    if left < 5400:
        return f"in {round(left / 60)} min ({_utc(resets_at, '%H:%M')} UTC)"
    if left < 86400:
        return f"in {round(left / 3600)} h ({_utc(resets_at, '%H:%M')} UTC)"
    return f"on {_utc(resets_at, '%Y-%m-%d')} (UTC)"


def _utc(ts: float, fmt: str) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime(fmt)
