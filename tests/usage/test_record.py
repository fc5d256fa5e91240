"""Every model call recorded: tokens from the API, estimates, cost, compaction, failures."""

from __future__ import annotations

import pytest

from bridge.config.schema import Cost
from bridge.models.base import Usage
from bridge.store import Store
from bridge.store.usage import UsageQueries
from bridge.usage.record import cost_usd, recorder_for
from tests.core.helpers import dm, group, overflow_once


async def _rows(store: Store):
    return await UsageQueries(store).rows()


# ------------------------------------------------------------------ cost arithmetic


def test_cost_is_usd_per_million_tokens():
    cost = Cost(input=3.0, output=15.0)
    assert cost_usd(Usage(1_000_000, 0), cost) == pytest.approx(3.0)
    assert cost_usd(Usage(0, 1_000_000), cost) == pytest.approx(15.0)
    assert cost_usd(Usage(2000, 500), cost) == pytest.approx((2000 * 3 + 500 * 15) / 1e6)


def test_cached_prompt_tokens_are_priced_at_cache_read():
    cost = Cost(input=3.0, output=15.0, cacheRead=0.3)
    usage = Usage(input_tokens=1000, output_tokens=200, cached_tokens=400)
    assert cost_usd(usage, cost) == pytest.approx((600 * 3 + 400 * 0.3 + 200 * 15) / 1e6)


def test_cache_writes_are_priced_at_cache_write():
    cost = Cost(input=3.0, output=15.0, cacheRead=0.3, cacheWrite=3.75)
    usage = Usage(input_tokens=2310, output_tokens=25, cached_tokens=2000,
                  cache_write_tokens=300)
    expected = (10 * 3 + 2000 * 0.3 + 300 * 3.75 + 25 * 15) / 1e6
    assert cost_usd(usage, cost) == pytest.approx(expected)


def test_unset_cache_prices_fall_back_to_input_never_free():
    """A model whose cost lists no cacheRead: cached tokens cost what input costs (a cap
    must not undercount); an explicit 0 is honoured."""
    usage = Usage(input_tokens=1000, output_tokens=0, cached_tokens=1000)
    assert cost_usd(usage, Cost(input=2.0)) == pytest.approx(1000 * 2 / 1e6)
    assert cost_usd(usage, Cost(input=2.0, cacheRead=0)) == 0.0


def test_reasoning_tokens_are_part_of_output_not_added():
    usage = Usage(input_tokens=0, output_tokens=100, reasoning_tokens=80)
    assert cost_usd(usage, Cost(output=10.0)) == pytest.approx(100 * 10 / 1e6)


def test_free_models_cost_nothing():
    assert cost_usd(Usage(5000, 5000), Cost()) == 0.0


# ------------------------------------------------------------------ recorded calls


async def test_reply_usage_is_recorded_with_model_provider_tokens_and_cost(live):
    live.server.error(503, "loading")
    live.server.reply("From the hosted model.",
                      usage={"input": 1000, "output": 200, "cached": 400, "reasoning": 50})
    await live.start()
    msg = group("hello", chat="-5", sender="7")
    await live.say(msg)
    assert live.channel.texts() == ["From the hosted model."]
    [row] = await _rows(live.store)  # the 503 reported no usage: nothing to count
    assert (row.model_ref, row.provider, row.purpose) == ("hosted/m", "hosted", "reply")
    assert (row.session_key, row.chat_id, row.sender_id) == (str(msg.session_key), "-5", "7")
    assert (row.input_tokens, row.output_tokens, row.cached_tokens,
            row.reasoning_tokens) == (1000, 200, 400, 50)
    assert row.cost_usd == pytest.approx((600 * 3 + 400 * 0.3 + 200 * 15) / 1e6)
    assert row.answered and not row.estimated and row.turn_id is not None


async def test_a_server_without_usage_gets_an_estimate_marked_as_such(live):
    live.server.reply("An answer from a quiet server.", usage=False)
    await live.start()
    await live.say(dm("hello there"))
    [row] = await _rows(live.store)
    assert row.estimated
    assert row.input_tokens > 0 and row.output_tokens > 0
    assert row.cost_usd == 0.0  # local/m has no cost


async def test_a_failed_attempt_that_reported_usage_counts_unanswered(live):
    live.server.reply("", reasoning="all thinking", usage=(300, 120))
    live.server.reply("The fallback answers.", usage=(310, 9))
    await live.start()
    await live.say(dm("question"))
    failed, answered = await _rows(live.store)
    assert (failed.model_ref, failed.answered, failed.output_tokens) == ("local/m", False, 120)
    assert (answered.model_ref, answered.answered) == ("hosted/m", True)
    assert answered.cost_usd == pytest.approx((310 * 3 + 9 * 15) / 1e6)


async def test_compaction_counts_against_the_chat_it_compacts(harness):
    await harness.start(behaviour=overflow_once())
    for i in range(3):
        await harness.say(dm(f"m{i}", sender="42"))
    rows = await _rows(harness.store)
    # m0, (m1 overflow: no usage reported), compaction, m1 retry, m2
    assert [r.purpose for r in rows] == ["reply", "compaction", "reply", "reply"]
    assert {r.session_key for r in rows} == {str(dm("x", sender="42").session_key)}
    assert all(r.sender_id == "42" for r in rows)


async def test_usage_survives_a_restart_and_spend_is_read_back(live):
    live.server.reply("one", usage=(1000, 1000))
    live.config = live.config.model_copy(update={"agents": live.config.agents.model_copy(
        update={"defaults": live.config.agents.defaults.model_copy(
            update={"model": live.config.agents.defaults.model.model_copy(
                update={"primary": "hosted/m", "fallbacks": ()})})})})
    await live.start()
    await live.say(dm("q"))
    await live.restart()
    day, month = await recorder_for(live.store).spent("hosted")
    assert day == month == pytest.approx((1000 * 3 + 1000 * 15) / 1e6)
    assert len(await _rows(live.store)) == 1


async def test_a_store_that_refuses_usage_rows_does_not_fail_the_turn(harness, caplog):
    await harness.start()

    async def broken(rows):
        raise OSError("disk full")

    recorder_for(harness.store).record = broken  # type: ignore[method-assign]
    await harness.say(dm("still answered"))
    assert harness.channel.texts() == ["echo: still answered"]
    assert "not recorded" in caplog.text
