"""Provider budgets: ``models.providers.<id>.budget: {dailyUsd, monthlyUsd}``.

:class:`BudgetGuard` is the router's ``budget`` check: once a provider's spend today (or
this month, UTC) reaches its cap, every model of that provider is skipped as
``budget_exhausted`` until the day (month) turns; the next candidate answers, or the
turn gets the usual apology.  Spend is what :mod:`bridge.usage.record` counted from the
store, so a restart does not forget it.  A call already running when the cap is reached
finishes: a budget can be overshot by the calls in flight, never by a new one.

Reaching a cap is logged once per provider and period; :meth:`BudgetGuard.status` is what
``/healthz`` and ``palaver doctor`` show.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bridge.usage.periods import day_key, month_key, next_day, next_month

if TYPE_CHECKING:
    from bridge.config.schema import Budget, Config
    from bridge.usage.record import UsageRecorder

log = logging.getLogger(__name__)


def exhausted_reason(budget: Budget, day_usd: float, month_usd: float) -> str | None:
    """Why ``budget`` is reached at this spend, or None while it is not."""
    if budget.monthlyUsd is not None and month_usd >= budget.monthlyUsd:
        return f"monthly budget ${budget.monthlyUsd:.2f} reached (${month_usd:.2f} spent)"
    if budget.dailyUsd is not None and day_usd >= budget.dailyUsd:
        return f"daily budget ${budget.dailyUsd:.2f} reached (${day_usd:.2f} spent today)"
    return None


class BudgetGuard:
    """``await guard(provider)`` -> why the provider may not be called now, or None."""

    def __init__(self, config: Callable[[], Config], recorder: UsageRecorder) -> None:
        self._config = config
        self.recorder = recorder
        self._logged: set[tuple[str, str]] = set()  # (provider, period) logged as reached

    def _budget(self, provider: str) -> Budget | None:
        defined = self._config().models.providers.get(provider)
        return defined.budget if defined is not None else None

    async def __call__(self, provider: str) -> str | None:
        budget = self._budget(provider)
        if budget is None or (budget.dailyUsd is None and budget.monthlyUsd is None):
            return None
        day_usd, month_usd = await self.recorder.spent(provider)
        reason = exhausted_reason(budget, day_usd, month_usd)
        if reason is not None:
            now = self.recorder.clock()
            monthly = budget.monthlyUsd is not None and month_usd >= budget.monthlyUsd
            period = month_key(now) if monthly else day_key(now)
            if (provider, period) not in self._logged:
                self._logged.add((provider, period))
                resets = next_month(now) if monthly else next_day(now)
                log.warning("provider %s: %s; its models are skipped until %s UTC",
                            provider, reason, _utc(resets),
                            extra={"event": "budget_exhausted", "provider": provider})
        return reason

    async def status(self) -> dict[str, dict[str, Any]]:
        """Each provider with a budget: its caps, what it spent, whether it is reached."""
        out: dict[str, dict[str, Any]] = {}
        for provider, defined in self._config().models.providers.items():
            budget = defined.budget
            if budget is None or (budget.dailyUsd is None and budget.monthlyUsd is None):
                continue
            day_usd, month_usd = await self.recorder.spent(provider)
            reason = exhausted_reason(budget, day_usd, month_usd)
            out[provider] = {
                "dailyUsd": budget.dailyUsd, "monthlyUsd": budget.monthlyUsd,
                "spentTodayUsd": round(day_usd, 6), "spentMonthUsd": round(month_usd, 6),
                "exhausted": reason is not None, "detail": reason or "",
            }
        return out


def budget_line(provider: str, budget: Budget, day_usd: float, month_usd: float,
                now: float) -> str:
    """One line for ``palaver doctor``: spend against each cap, and whether it holds."""
    from bridge.usage.report import usd_text

    parts = []
    if budget.dailyUsd is not None:
        parts.append(f"{usd_text(day_usd)} of {usd_text(budget.dailyUsd)} today")
    if budget.monthlyUsd is not None:
        parts.append(f"{usd_text(month_usd)} of {usd_text(budget.monthlyUsd)} this month")
    monthly = budget.monthlyUsd is not None and month_usd >= budget.monthlyUsd
    daily = budget.dailyUsd is not None and day_usd >= budget.dailyUsd
    if monthly or daily:
        until = _utc(next_month(now) if monthly else next_day(now))
        state = f"EXHAUSTED, its models are skipped until {until} UTC"
    else:
        state = "ok"
    return f"budget {provider}: {', '.join(parts)}: {state}"


async def budget_lines(config: Config, *, now: float | None = None) -> list[str]:
    """``palaver doctor``'s budget rows: each provider with a budget, its spend read from
    the store (none yet when there is no store)."""
    import time

    from bridge.store import Store
    from bridge.store.usage import UsageQueries
    from bridge.usage.periods import day_start, month_start

    budgets = {pid: p.budget for pid, p in config.models.providers.items()
               if p.budget is not None
               and (p.budget.dailyUsd is not None or p.budget.monthlyUsd is not None)}
    if not budgets:
        return []
    now = time.time() if now is None else now
    day: dict[str, float] = {}
    month: dict[str, float] = {}
    if Store.exists(config):
        store = await Store.connect(config)
        try:
            queries = UsageQueries(store)
            day = await queries.provider_spend(since=day_start(now))
            month = await queries.provider_spend(since=month_start(now))
        finally:
            await store.close()
    return [budget_line(pid, budget, day.get(pid, 0.0), month.get(pid, 0.0), now)
            for pid, budget in budgets.items()]


def _utc(ts: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M")
