"""Recording usage: tokens and cost of every model call, attributed to a chat.

The router puts what each call used on its :class:`~bridge.models.base.Attempt` (the
API's own usage fields, or :func:`estimate_usage` when the server reported none); a turn
turns its attempts into :class:`~bridge.store.usage.UsageRow` values with
:func:`call_rows` and hands them to the store's :class:`UsageRecorder`
(:func:`recorder_for`), which writes them in one transaction, keeps each provider's spend
for the day and month in memory (read from the store once, so it holds across restarts)
and tells its listeners (metrics).

Which calls count: every call that answered (replies and compactions, against the chat
they serve), and a failed attempt only when its server still reported usage (an answer
that was all reasoning, a response that failed after generating): a hosted API bills
those, and one that reports nothing is not guessed at.

Cost is USD per million tokens, from the model's ``cost`` (``input``, ``output``,
``cacheRead``, ``cacheWrite``).  Cached prompt tokens are priced at ``cacheRead`` and
cache writes at ``cacheWrite`` when the model sets them; a model that does not set them
has its cache tokens priced as ordinary input (a cap never undercounts).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Literal

from bridge.models.base import Attempt, ModelRequest, Usage
from bridge.prompt import estimate_parts, estimate_tokens
from bridge.store.usage import UsageQueries, UsageRow
from bridge.usage.periods import day_key, day_start, month_key, month_start

if TYPE_CHECKING:
    from bridge.config.schema import Config, Cost
    from bridge.store.db import Database
    from bridge.store.records import StoredMessage

log = logging.getLogger(__name__)

PER_MILLION = 1_000_000


# ------------------------------------------------------------------ tokens and cost


def estimate_usage(request: ModelRequest, text: str) -> Usage:
    """Palaver's own count for a server that reported none: the prompt (instructions and
    every turn, images by their size) and the answer text, marked ``estimated``."""
    prompt = estimate_tokens(request.instructions or "")
    prompt += sum(estimate_parts(turn.parts) for turn in request.turns)
    return Usage(input_tokens=prompt, output_tokens=estimate_tokens(text), estimated=True)


def complete_usage(usage: Usage, request: ModelRequest, text: str) -> Usage:
    """``usage`` as reported, or estimated where the server left it out: all of it when
    it reported nothing, the output alone when it counted the prompt only."""
    if not usage.reported:
        return estimate_usage(request, text)
    if usage.output_tokens == 0 and text:
        return Usage(usage.input_tokens, estimate_tokens(text), usage.reasoning_tokens,
                     usage.cached_tokens, usage.cache_write_tokens, estimated=True)
    return usage


def cost_usd(usage: Usage, cost: Cost) -> float:
    """What ``usage`` cost at ``cost`` (USD per million tokens)."""
    cached = min(usage.cached_tokens, usage.input_tokens)
    written = min(usage.cache_write_tokens, usage.input_tokens - cached)
    fresh = usage.input_tokens - cached - written
    set_fields = cost.model_fields_set
    read_price = cost.cacheRead if "cacheRead" in set_fields else cost.input
    write_price = cost.cacheWrite if "cacheWrite" in set_fields else cost.input
    total = (fresh * cost.input + cached * read_price + written * write_price
             + usage.output_tokens * cost.output)
    return total / PER_MILLION


def model_cost(config: Config, ref: str) -> Cost:
    """The ``cost`` of the model ``ref`` (all zeros when the config does not list it)."""
    from bridge.config.schema import Cost

    provider_id, _, model_id = ref.partition("/")
    provider = config.models.providers.get(provider_id)
    if provider is None or not model_id:
        return Cost()
    return provider.model_def(model_id).cost


def provider_of(ref: str) -> str:
    return ref.partition("/")[0] or ref


def call_rows(
    config: Config,
    attempts: Iterable[Attempt],
    *,
    message: StoredMessage,
    turn_id: int | None,
    purpose: Literal["reply", "compaction"],
    answer_usage: Usage | None = None,
    now: float | None = None,
) -> list[UsageRow]:
    """The usage rows of one router call's attempts.

    Attributed to ``message``'s chat and sender (the last message of the turn).  The
    attempt that answered always counts (``answer_usage`` stands in when the router put
    no usage on it); a failed one only with the usage its server reported.
    """
    at = time.time() if now is None else now
    a = message.address
    rows: list[UsageRow] = []
    for attempt in attempts:
        if attempt.skipped:
            continue
        answered = attempt.error_class is None
        usage = attempt.usage
        if answered and (usage is None or not usage.reported):
            usage = answer_usage if answer_usage is not None else usage
        if usage is None or (not answered and not usage.reported):
            continue
        rows.append(UsageRow(
            at=at, session_key=message.session_key, channel=a.channel, account=a.account,
            chat_id=a.chat_id, chat_kind=a.chat_kind.value, thread_id=a.thread_id,
            sender_id=message.sender_id, turn_id=turn_id, purpose=purpose,
            model_ref=attempt.model_ref, provider=provider_of(attempt.model_ref),
            input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
            reasoning_tokens=usage.reasoning_tokens, cached_tokens=usage.cached_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            cost_usd=cost_usd(usage, model_cost(config, attempt.model_ref)),
            estimated=usage.estimated or not usage.reported, answered=answered))
    return rows


# ------------------------------------------------------------------ the recorder


class ProviderSpend:
    """USD spent per provider today and this month (UTC), kept in memory."""

    def __init__(self) -> None:
        self.day = ""
        self.month = ""
        self.by_day: dict[str, float] = {}
        self.by_month: dict[str, float] = {}

    def roll(self, now: float) -> None:
        """Start a new day or month when ``now`` is in one."""
        day, month = day_key(now), month_key(now)
        if day != self.day:
            self.day, self.by_day = day, {}
        if month != self.month:
            self.month, self.by_month = month, {}

    def add(self, provider: str, usd: float, at: float) -> None:
        self.roll(at)
        if day_key(at) == self.day:
            self.by_day[provider] = self.by_day.get(provider, 0.0) + usd
        if month_key(at) == self.month:
            self.by_month[provider] = self.by_month.get(provider, 0.0) + usd


Listener = Callable[[Sequence[UsageRow]], None]


class UsageRecorder:
    """Writes usage rows and keeps the spend per provider; one per store
    (:func:`recorder_for`)."""

    def __init__(self, store: Database, *, clock: Callable[[], float] = time.time) -> None:
        self.queries = UsageQueries(store)
        self.clock = clock
        self._spend = ProviderSpend()
        self._loaded = False
        self._lock = asyncio.Lock()
        self._listeners: list[Listener] = []

    def listen(self, listener: Listener) -> None:
        """Call ``listener(rows)`` after rows are stored (must not block nor raise)."""
        self._listeners.append(listener)

    async def record(self, rows: Sequence[UsageRow]) -> None:
        """Store ``rows`` (one transaction) and count them in the running spend."""
        if not rows:
            return
        async with self._lock:
            await self.queries.record_usage(rows)
            if self._loaded:
                for row in rows:
                    if row.cost_usd:
                        self._spend.add(row.provider, row.cost_usd, row.at)
        for listener in self._listeners:
            try:
                listener(rows)
            except Exception:
                log.exception("usage listener %r failed", listener)

    async def spent(self, provider: str) -> tuple[float, float]:
        """USD ``provider`` has cost today and this month (UTC)."""
        async with self._lock:
            now = self.clock()
            if not self._loaded:
                await self._load(now)
            self._spend.roll(now)
            return (self._spend.by_day.get(provider, 0.0),
                    self._spend.by_month.get(provider, 0.0))

    async def _load(self, now: float) -> None:
        spend = ProviderSpend()
        spend.roll(now)
        spend.by_month = await self.queries.provider_spend(since=month_start(now))
        spend.by_day = await self.queries.provider_spend(since=day_start(now))
        self._spend, self._loaded = spend, True


def recorder_for(store: Database) -> UsageRecorder:
    """The one :class:`UsageRecorder` of ``store`` (made on first use)."""
    recorder = store.__dict__.get("_usage_recorder")
    if recorder is None:
        recorder = store.__dict__["_usage_recorder"] = UsageRecorder(store)
    assert isinstance(recorder, UsageRecorder)
    return recorder
