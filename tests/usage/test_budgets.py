"""Provider budgets: a provider past its daily or monthly cap is skipped by the router
(``budget_exhausted``), the next model answers or the usual apology; logged once, counted,
shown in /healthz and doctor; spend read back from the store after a restart."""

from __future__ import annotations

import argparse
import json
import logging

import aiohttp
import pytest

from bridge.config.schema import Config
from bridge.health import HealthServer
from bridge.metrics import Metrics
from bridge.models.base import ErrorClass
from bridge.models.doctor import cmd_doctor
from bridge.store import Store
from bridge.store.usage import UsageQueries, UsageRow
from bridge.turn import APOLOGY, TurnEvent
from bridge.usage.budgets import BudgetGuard, budget_lines
from bridge.usage.periods import day_start
from bridge.usage.record import UsageRecorder
from tests.core.helpers import dm
from tests.models.conftest import closed_port
from tests.usage.conftest import live_config

# hosted/m: $3 in, $15 out per million: 1000 in + 1000 out = $0.018.
COSTLY = (1000, 1000)


def _hosted_first(config: Config, **budget: float) -> Config:
    data = config.model_dump(mode="json", exclude_unset=True)
    data["models"]["providers"]["hosted"]["budget"] = budget
    data["agents"]["defaults"]["model"] = {"primary": "hosted/m", "fallbacks": ["local/m"]}
    return Config.model_validate(data)


def _attempts(live) -> list[list[tuple[str, str | None, bool]]]:
    return [[(a.model_ref, a.error_class.value if a.error_class else None, a.skipped)
             for a in e.attempts] for e in live.events if isinstance(e, TurnEvent)]


async def test_a_provider_past_its_monthly_budget_is_skipped_for_the_next_model(live, caplog):
    live.config = _hosted_first(live.config, monthlyUsd=0.01)
    live.server.reply("hosted answer", usage=COSTLY)
    live.server.reply("local answer", usage=(10, 2))
    live.server.reply("local again", usage=(10, 2))
    await live.start()
    caplog.set_level(logging.WARNING, logger="bridge.usage.budgets")
    for text in ("one", "two", "three"):
        await live.say(dm(text))
    assert live.channel.texts() == ["hosted answer", "local answer", "local again"]
    attempts = _attempts(live)
    assert attempts[0] == [("hosted/m", None, False)]
    assert attempts[1][0] == ("hosted/m", "budget_exhausted", True)
    assert attempts[1][1] == ("local/m", None, False)
    # Only the three calls reached the server: the skipped provider was never asked.
    assert len(live.server.requests) == 3
    warnings = [r for r in caplog.records if "budget" in r.getMessage()]
    assert len(warnings) == 1  # logged once, not once per turn
    assert "monthly budget $0.01 reached" in warnings[0].getMessage()


async def test_daily_budget_is_skipped_too(live):
    live.config = _hosted_first(live.config, dailyUsd=0.01)
    live.server.reply("hosted answer", usage=COSTLY)
    live.server.reply("local answer", usage=(10, 2))
    await live.start()
    await live.say(dm("one"))
    await live.say(dm("two"))
    assert _attempts(live)[1][0] == ("hosted/m", "budget_exhausted", True)


async def test_every_candidate_past_its_budget_gets_the_usual_apology(live):
    data = _hosted_first(live.config, monthlyUsd=0.01).model_dump(mode="json",
                                                                  exclude_unset=True)
    data["agents"]["defaults"]["model"] = "hosted/m"
    live.config = Config.model_validate(data)
    live.server.reply("hosted answer", usage=COSTLY)
    await live.start()
    await live.say(dm("one"))
    await live.say(dm("two"))
    assert live.channel.texts() == ["hosted answer", APOLOGY]
    assert len(live.server.requests) == 1  # a budget is never forced, unlike a cooldown
    assert _attempts(live)[1] == [("hosted/m", "budget_exhausted", True)]


async def test_the_budget_holds_across_a_restart(live):
    live.config = _hosted_first(live.config, monthlyUsd=0.01)
    live.server.reply("hosted answer", usage=COSTLY)
    live.server.reply("local answer", usage=(10, 2))
    await live.start()
    await live.say(dm("one"))
    await live.restart()  # a new store connection and recorder: spend comes from the store
    await live.say(dm("two"))
    assert live.channel.texts()[-1] == "local answer"
    assert _attempts(live)[-1][0] == ("hosted/m", "budget_exhausted", True)


async def test_a_budget_raised_by_a_reload_lets_the_provider_answer_again(live):
    live.config = _hosted_first(live.config, monthlyUsd=0.01)
    live.server.reply("hosted answer", usage=COSTLY)
    live.server.reply("hosted again", usage=(1, 1))
    await live.start()
    await live.say(dm("one"))
    live.config = _hosted_first(live.config, monthlyUsd=5.0)
    await live.say(dm("two"))
    assert live.channel.texts() == ["hosted answer", "hosted again"]


def _row(at: float, usd: float, provider: str = "hosted") -> UsageRow:
    return UsageRow(at=at, session_key="telegram:default:direct:1", channel="telegram",
                    account="default", chat_id="1", chat_kind="direct", thread_id=None,
                    sender_id="1", turn_id=None, purpose="reply", model_ref=f"{provider}/m",
                    provider=provider, input_tokens=1, output_tokens=1, reasoning_tokens=0,
                    cached_tokens=0, cache_write_tokens=0, cost_usd=usd, estimated=False)


async def test_a_daily_budget_turns_with_the_day_a_monthly_one_with_the_month(tmp_path):
    store = await Store.open(tmp_path / "p.db")
    try:
        now = day_start(1_794_700_000.0) + 3600  # 2026-11-14 01:00 UTC
        clock = {"now": now}
        recorder = UsageRecorder(store, clock=lambda: clock["now"])
        await recorder.queries.record_usage([_row(now - 7200, 2.0)])  # yesterday 23:00
        data = {"models": {"providers": {"hosted": {
            "baseUrl": "http://127.0.0.1:9/v1", "models": [{"id": "m"}],
            "budget": {"dailyUsd": 1.0, "monthlyUsd": 2.5}}}}}
        guard = BudgetGuard(lambda: Config.model_validate(data), recorder)
        assert await guard("hosted") is None  # yesterday's $2 is not today's
        await recorder.record([_row(now, 0.6)])
        assert await guard("hosted") == "monthly budget $2.50 reached ($2.60 spent)"
        assert await guard("local") is None  # no budget: never skipped
        data["models"]["providers"]["hosted"]["budget"] = {"dailyUsd": 0.5}
        assert await guard("hosted") == "daily budget $0.50 reached ($0.60 spent today)"
        clock["now"] = now + 86400  # the next day
        assert await guard("hosted") is None
        status = await guard.status()
        assert status["hosted"]["exhausted"] is False
        assert status["hosted"]["spentTodayUsd"] == 0.0
    finally:
        await store.close()


async def test_budgets_show_in_healthz_and_never_make_it_unhealthy():
    async def check():
        return {"store": {"ok": True, "detail": ""}, "channels": {},
                "budgets": {"hosted": {"dailyUsd": None, "monthlyUsd": 5.0,
                                       "spentTodayUsd": 1.0, "spentMonthUsd": 5.2,
                                       "exhausted": True, "detail": "monthly budget"}}}

    server = HealthServer("127.0.0.1", 0, check=check, metrics=Metrics())
    await server.start()
    try:
        async with aiohttp.ClientSession() as http, http.get(server.url + "/healthz") as resp:
            body = await resp.json()
            assert resp.status == 200
        assert body["status"] == "ok"
        assert body["budgets"]["hosted"]["exhausted"] is True
    finally:
        await server.stop()


async def test_the_app_reports_budgets_in_its_health(tmp_path):
    from bridge.app import App
    from tests.core.helpers import RecordingChannel
    from tests.fakes.model_server import FakeModelServer

    async with FakeModelServer() as server:
        config = _hosted_first(live_config(tmp_path, server), monthlyUsd=0.01)
        app = App(config, channels=[RecordingChannel()])
        await app.start()
        try:
            server.reply("costly", usage=COSTLY)
            await app.core.accept(dm("hi"))
            await app.core.wait_idle()
            health = await app.health()
            hosted = health["budgets"]["hosted"]
            assert hosted["exhausted"] and hosted["spentMonthUsd"] == pytest.approx(0.018)
            assert "local" not in health["budgets"]
        finally:
            await app.stop()


def test_doctor_shows_each_budget_and_its_spend(tmp_path, capsys):
    import asyncio
    import time

    data_dir = tmp_path / "data"

    async def spend() -> None:
        store = await Store.open(data_dir / "palaver.db")
        await UsageQueries(store).record_usage([_row(time.time(), 6.0)])
        await store.close()

    asyncio.run(spend())
    path = tmp_path / "palaver.json"
    path.write_text(json.dumps({
        "dataDir": str(data_dir),
        "models": {"mode": "replace", "providers": {"hosted": {
            "baseUrl": f"http://127.0.0.1:{closed_port()}/v1", "models": [{"id": "m"}],
            "budget": {"monthlyUsd": 5}}}},
        "agents": {"defaults": {"model": "hosted/m"}}}))
    lines = asyncio.run(budget_lines(Config.model_validate(json.loads(path.read_text()))))
    assert len(lines) == 1
    assert lines[0].startswith("budget hosted: $6.00 of $5.00 this month: EXHAUSTED")
    cmd_doctor(argparse.Namespace(config=str(path)))  # the provider is down: exit 1
    assert "budget hosted: $6.00 of $5.00 this month: EXHAUSTED" in capsys.readouterr().out


def test_budget_exhausted_is_an_error_class_the_store_reads_back():
    from bridge.models.base import Attempt
    from bridge.store.records import attempts_from_json, attempts_to_json

    attempt = Attempt("hosted/m", ErrorClass.BUDGET_EXHAUSTED, 0.0, "cap", skipped=True)
    assert attempts_from_json(attempts_to_json([attempt]))[0] == attempt


async def test_the_turn_log_line_says_budget_exhausted(live, caplog):
    live.config = _hosted_first(live.config, monthlyUsd=0.01)
    live.server.reply("hosted answer", usage=COSTLY)
    live.server.reply("local answer", usage=(10, 2))
    await live.start()
    await live.say(dm("one"))
    caplog.set_level(logging.INFO, logger="bridge.conversation")
    # Only the second turn's line (a test before may have left the logger at INFO, and
    # then the first turn's line would be captured too).
    caplog.clear()
    await live.say(dm("two"))
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith(
        "turn answered"))
    assert "hosted/m:budget_exhausted:0,local/m:ok:" in line
