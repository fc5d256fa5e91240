"""``/usage`` in a chat and ``palaver usage`` on the command line."""

from __future__ import annotations

import csv
import io
import json
import time

import pytest

from bridge.cli import main
from bridge.commands import CommandContext
from bridge.store import Store
from bridge.store.usage import UsageQueries, UsageRow
from bridge.usage.periods import parse_age, parse_month
from bridge.usage.report import usage_command
from tests.core.helpers import dm, group, make_config


async def _ctx(harness, inbound) -> CommandContext:
    rows = await harness.store.messages_for(str(inbound.session_key))
    message = next(m for m in rows if m.platform_message_id == inbound.message_id)
    return CommandContext(config=harness.config, store=harness.store, message=message)


async def test_usage_shows_this_chats_messages_tokens_and_cost(harness):
    await harness.start()
    first = dm("one", sender="42")
    await harness.say(first)
    await harness.say(dm("two", sender="42"))
    await harness.say(dm("elsewhere", sender="99"))  # another chat: not counted here
    reply = await usage_command(await _ctx(harness, first), "")
    # FakeRouter: 10 in + 5 out per call, free models.
    assert "Today: 2 messages, 30 tokens (20 in, 10 out), $0" in reply
    assert "This month: 2 messages, 30 tokens" in reply
    assert "All chats" not in reply


async def test_owners_also_see_every_chats_totals_and_budgets(harness):
    config = make_config(harness.tmp_path, channels={"telegram": {
        "dmPolicy": "open", "allowFrom": ["*"], "groupPolicy": "open", "owners": ["42"]}})
    config = config.model_copy(update={"models": config.models.model_copy(update={
        "providers": {**config.models.providers, "backup": config.models.providers[
            "backup"].model_copy(update={"budget": _budget(monthly=5.0)})}})})
    await harness.start(config=config)
    owner_msg = dm("mine", sender="42")
    theirs = dm("theirs", sender="99")
    await harness.say(owner_msg)
    await harness.say(theirs)
    reply = await usage_command(await _ctx(harness, owner_msg), "")
    assert "Today: 1 message, 15 tokens" in reply
    assert "All chats (you are an owner):" in reply
    assert "  Today: 2 messages, 30 tokens" in reply
    assert "Budget backup: $0 of $5.00 this month" in reply
    other = await usage_command(await _ctx(harness, theirs), "")
    assert "All chats" not in other and "Budget" not in other


def _budget(**kw):
    from bridge.config.schema import Budget

    return Budget(dailyUsd=kw.get("daily"), monthlyUsd=kw.get("monthly"))


async def test_usage_names_the_limits_of_this_chat(harness):
    config = make_config(harness.tmp_path, channels={"telegram": {
        "dmPolicy": "open", "allowFrom": ["*"], "groupPolicy": "open",
        "groups": {"*": {"requireMention": False,
                         "limits": {"messagesPerHour": 100,
                                    "perSender": {"messagesPerHour": 30}}}}}})
    await harness.start(config=config)
    msg = group("hi", chat="-7", sender="5")
    await harness.say(msg)
    reply = await usage_command(await _ctx(harness, msg), "")
    assert "Limits for this chat: 100 messages an hour" in reply
    assert "Limits for each sender here: 30 messages an hour" in reply


# ------------------------------------------------------------------ palaver usage


def _row(at: float, **kw) -> UsageRow:
    values = dict(at=at, session_key="telegram:default:direct:1", channel="telegram",
                  account="default", chat_id="1", chat_kind="direct", thread_id=None,
                  sender_id="1", turn_id=None, purpose="reply", model_ref="local/small",
                  provider="local", input_tokens=100, output_tokens=10, reasoning_tokens=0,
                  cached_tokens=0, cache_write_tokens=0, cost_usd=0.0, estimated=False)
    values.update(kw)
    return UsageRow(**values)


@pytest.fixture
async def recorded(tmp_path):
    config_path = tmp_path / "palaver.json"
    data_dir = tmp_path / "data"
    config_path.write_text(json.dumps({"dataDir": str(data_dir)}))
    store = await Store.open(data_dir / "palaver.db")
    now = time.time()
    await UsageQueries(store).record_usage([
        _row(now - 60),
        _row(now - 120, model_ref="backup/m", provider="backup", cost_usd=0.5,
             session_key="telegram:default:group:-5", chat_kind="group", chat_id="-5",
             sender_id="7", estimated=True),
        _row(now - 180, model_ref="backup/m", provider="backup", cost_usd=0.25,
             channel="whatsapp", session_key="whatsapp:default:direct:+1",
             sender_id="+1"),
        _row(now - 40 * 86400, cost_usd=9.0),  # outside the default 30 days
    ])
    await store.close()
    return config_path


def test_palaver_usage_by_model_as_json(recorded, capsys):
    assert main(["usage", "--config", str(recorded), "--by", "model",
                 "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in rows] == ["backup/m", "local/small"]  # costliest first
    assert rows[0]["cost_usd"] == pytest.approx(0.75) and rows[0]["calls"] == 2
    assert rows[0]["estimated_calls"] == 1
    assert rows[1]["input_tokens"] == 100  # the 40-day-old row is not in the window


@pytest.mark.parametrize("by,expected", [
    ("chat", {"telegram:default:direct:1", "telegram:default:group:-5",
              "whatsapp:default:direct:+1"}),
    ("sender", {"telegram:1", "telegram:7", "whatsapp:+1"}),
    ("provider", {"local", "backup"}),
    ("channel", {"telegram", "whatsapp"}),
])
def test_palaver_usage_groups_as_csv(recorded, capsys, by, expected):
    assert main(["usage", "--config", str(recorded), "--by", by, "--format", "csv"]) == 0
    reader = csv.DictReader(io.StringIO(capsys.readouterr().out))
    assert {r[by] for r in reader} == expected


def test_palaver_usage_table_has_a_total_and_since(recorded, capsys):
    assert main(["usage", "--config", str(recorded), "--since", "90d", "--by", "day"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Usage by day, last 90d:")
    total = out.strip().splitlines()[-1].split()
    assert total[0] == "TOTAL" and total[1] == "4"
    assert total[6] == "9.7500"


def test_palaver_usage_one_month(recorded, capsys):
    # 40 days ago is always another calendar month than the last few minutes.
    month = time.strftime("%Y-%m", time.gmtime(time.time() - 40 * 86400))
    assert main(["usage", "--config", str(recorded), "--month", month,
                 "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["chat"], r["calls"], r["cost_usd"]) for r in rows] == [
        ("telegram:default:direct:1", 1, 9.0)]


def test_palaver_usage_rejects_a_bad_age_with_one_line(recorded, capsys):
    assert main(["usage", "--config", str(recorded), "--since", "soon"]) == 2
    err = capsys.readouterr().err
    assert "expected an age such as 7d" in err and "Traceback" not in err


def test_palaver_usage_without_a_store_says_nothing_recorded(tmp_path, capsys):
    path = tmp_path / "palaver.json"
    path.write_text(json.dumps({"dataDir": str(tmp_path / "empty")}))
    assert main(["usage", "--config", str(path)]) == 0
    assert "No model calls recorded" in capsys.readouterr().out
    assert not (tmp_path / "empty" / "palaver.db").exists()


def test_periods_parse():
    assert parse_age("7d") == 7 * 86400 and parse_age("12h") == 43200
    assert parse_age("30m") == 1800
    start, end = parse_month("2026-12")
    assert end - start == 31 * 86400
    with pytest.raises(ValueError):
        parse_month("December")
    with pytest.raises(ValueError):
        parse_age("-3d")
