"""Reports: ``/usage`` in a chat and ``palaver usage`` on the command line.

``/usage`` shows this chat's messages, tokens and cost today and this month (UTC), and the
limits that apply here; an owner (``channels.<name>.owners``) also sees the totals of
every chat and each provider's budget.  ``palaver usage`` groups the recorded calls by
chat, sender, model, provider, channel or day, as a table, CSV or JSON.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sys
import time
from typing import TYPE_CHECKING, Any

from bridge.config.resolve import is_owner
from bridge.store.usage import GroupBy, UsageQueries, UsageTotals
from bridge.usage.periods import day_start, month_start, parse_age, parse_month

if TYPE_CHECKING:
    from bridge.commands import CommandContext
    from bridge.config.schema import Config, LimitValues

DEFAULT_SINCE = "30d"


# ------------------------------------------------------------------ formatting


def tokens_text(count: int) -> str:
    """``950``, ``12.3k``, ``4.56M``: short enough for a chat line."""
    if count < 1000:
        return str(count)
    if count < 1_000_000:
        return f"{count / 1000:.1f}k"
    return f"{count / 1_000_000:.2f}M"


def usd_text(usd: float) -> str:
    """Dollars with enough digits to see a local model's zero and a cheap call's cents."""
    if usd == 0:
        return "$0"
    if usd < 0.01:
        return f"${usd:.4f}"
    return f"${usd:.2f}"


def _line(label: str, t: UsageTotals) -> str:
    text = (f"{label}: {t.messages} message{'' if t.messages == 1 else 's'}, "
            f"{tokens_text(t.tokens)} tokens ({tokens_text(t.input_tokens)} in, "
            f"{tokens_text(t.output_tokens)} out), {usd_text(t.cost_usd)}")
    if t.estimated_calls:
        text += " (partly estimated)"
    return text


def _limit_words(values: LimitValues) -> list[str]:
    words = []
    if values.messagesPerMinute is not None:
        words.append(f"{values.messagesPerMinute} messages a minute")
    if values.messagesPerHour is not None:
        words.append(f"{values.messagesPerHour} messages an hour")
    if values.tokensPerDay is not None:
        words.append(f"{tokens_text(values.tokensPerDay)} tokens a day")
    if values.costPerDayUsd is not None:
        words.append(f"{usd_text(values.costPerDayUsd)} a day")
    if values.costPerMonthUsd is not None:
        words.append(f"{usd_text(values.costPerMonthUsd)} a month")
    return words


# ------------------------------------------------------------------ /usage


async def usage_command(ctx: CommandContext, arg: str) -> str:
    """``/usage``: this chat's messages, tokens and cost today and this month; owners
    also get every chat's totals and the provider budgets."""
    from bridge.usage.limits import limits_for

    config, message = ctx.config, ctx.message
    queries = UsageQueries(ctx.store)
    now = time.time()
    today, month = day_start(now), month_start(now)
    key = message.session_key
    lines = ["Usage in this chat (UTC):",
             _line("Today", await queries.totals(since=today, session_key=key,
                                                 messages=True)),
             _line("This month", await queries.totals(since=month, session_key=key,
                                                      messages=True))]
    owner = is_owner(config, message.address.channel, message.sender_id)
    limits = limits_for(config, message.address, message.sender_id)
    if limits is not None and not owner:
        chat = _limit_words(limits)
        sender = _limit_words(limits.perSender) if limits.perSender else []
        if chat:
            lines.append("Limits for this chat: " + ", ".join(chat))
        if sender:
            lines.append("Limits for each sender here: " + ", ".join(sender))
    if owner:
        lines.append("All chats (you are an owner):")
        lines.append(_line("  Today", await queries.totals(since=today, messages=True)))
        lines.append(_line("  This month", await queries.totals(since=month, messages=True)))
        for provider, row in await _budget_rows(config, queries, today, month):
            lines.append(f"  Budget {provider}: {row}")
    return "\n".join(lines)


async def _budget_rows(config: Config, queries: UsageQueries, today: float,
                       month: float) -> list[tuple[str, str]]:
    rows = []
    day_spend = await queries.provider_spend(since=today)
    month_spend = await queries.provider_spend(since=month)
    for provider, defined in config.models.providers.items():
        budget = defined.budget
        if budget is None:
            continue
        parts = []
        if budget.dailyUsd is not None:
            parts.append(f"{usd_text(day_spend.get(provider, 0.0))} of "
                         f"{usd_text(budget.dailyUsd)} today")
        if budget.monthlyUsd is not None:
            parts.append(f"{usd_text(month_spend.get(provider, 0.0))} of "
                         f"{usd_text(budget.monthlyUsd)} this month")
        if parts:
            rows.append((provider, ", ".join(parts)))
    return rows


# ------------------------------------------------------------------ palaver usage

COLUMNS = ("calls", "input_tokens", "output_tokens", "reasoning_tokens", "cached_tokens",
           "cost_usd", "estimated_calls")


def window(since: str | None, month: str | None, *, now: float | None = None
           ) -> tuple[float, float | None, str]:
    """(start, end or None, a description) of ``--since AGE`` or ``--month YYYY-MM``."""
    now = time.time() if now is None else now
    if month:
        start, end = parse_month(month)
        return start, end, f"month {month.strip()} (UTC)"
    age = since or DEFAULT_SINCE
    return now - parse_age(age), None, f"last {age.strip()}"


def render(rows: list[tuple[str, UsageTotals]], by: str, output_format: str) -> str:
    """The grouped rows as ``table``, ``csv`` or ``json`` (with a total row)."""
    records: list[dict[str, Any]] = []
    for group, t in rows:
        records.append({by: group, "calls": t.calls, "input_tokens": t.input_tokens,
                        "output_tokens": t.output_tokens,
                        "reasoning_tokens": t.reasoning_tokens,
                        "cached_tokens": t.cached_tokens, "cost_usd": round(t.cost_usd, 6),
                        "estimated_calls": t.estimated_calls})
    if output_format == "json":
        return json.dumps(records, indent=2)
    if output_format == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=[by, *COLUMNS], lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        return buf.getvalue().rstrip("\n")
    total = {c: sum(r[c] for r in records) for c in COLUMNS}
    header = [by.upper(), "CALLS", "INPUT", "OUTPUT", "REASONING", "CACHED", "COST USD",
              "ESTIMATED"]
    body = [[str(r[by]), str(r["calls"]), str(r["input_tokens"]), str(r["output_tokens"]),
             str(r["reasoning_tokens"]), str(r["cached_tokens"]), f"{r['cost_usd']:.4f}",
             str(r["estimated_calls"])] for r in records]
    body.append(["TOTAL", str(total["calls"]), str(total["input_tokens"]),
                 str(total["output_tokens"]), str(total["reasoning_tokens"]),
                 str(total["cached_tokens"]), f"{total['cost_usd']:.4f}",
                 str(total["estimated_calls"])])
    widths = [max(len(row[i]) for row in (header, *body)) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                  for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()
        for row in (header, *body))


def cmd_usage(args: Any) -> int:
    """``palaver usage [--since AGE | --month YYYY-MM] [--by ...] [--format ...]``."""
    from bridge.cli import EXIT_OK, EXIT_UNUSABLE
    from bridge.config.load import load_for_cli
    from bridge.store import Store

    config, _path = load_for_cli(args)
    try:
        start, end, described = window(getattr(args, "since", None),
                                       getattr(args, "month", None))
    except ValueError as exc:
        print(f"palaver usage: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    by: GroupBy = getattr(args, "by", "chat") or "chat"
    output_format = getattr(args, "output_format", "table") or "table"

    async def run() -> list[tuple[str, UsageTotals]]:
        if not Store.exists(config):
            return []
        store = await Store.connect(config)
        try:
            return await UsageQueries(store).report(since=start, until=end, by=by)
        finally:
            await store.close()

    rows = asyncio.run(run())
    if output_format == "table":
        print(f"Usage by {by}, {described}:")
        if not rows:
            print("No model calls recorded in that time.")
            return EXIT_OK
    print(render(rows, by, output_format))
    return EXIT_OK
