"""``debounceMs`` (issue 17): what one sender writes in quick succession is answered in
one turn; commands and /stop do not wait, nor does the acknowledgement."""

from __future__ import annotations

import asyncio

from tests.core.helpers import dm, make_config
from tests.core.test_reactions import EYES, ReactingChannel


def _config(tmp_path, debounce_ms: int):
    return make_config(tmp_path, channels={"telegram": {
        "dmPolicy": "open", "allowFrom": ["*"], "groupPolicy": "open",
        "debounceMs": debounce_ms}})


async def _idle(harness) -> None:
    await asyncio.wait_for(harness.core.wait_idle(), 30)  # a hang guard, not a timing


async def test_messages_within_the_window_are_one_turn(harness):
    await harness.start(config=_config(harness.tmp_path, 2000))
    for text in ("so", "I was thinking", "what about pizza?"):
        await harness.core.accept(dm(text))
    assert harness.router.calls == []  # waiting for more
    await _idle(harness)  # wait_idle counts the waiting messages as work
    (call,) = harness.router.chat_calls
    assert all(t in call.last_user for t in ("so", "I was thinking", "what about pizza?"))
    assert len(harness.channel.texts()) == 1

    # Once answered, the next message is a turn of its own.
    await harness.core.accept(dm("and a salad"))
    await _idle(harness)
    assert len(harness.router.chat_calls) == 2
    assert "pizza" not in harness.router.chat_calls[1].last_user


async def test_commands_and_stop_do_not_wait(harness):
    # A minute's debounce: a command that waited for it would trip the hang guard.
    await harness.start(config=_config(harness.tmp_path, 60_000))
    await harness.core.accept(dm("/help"))
    await asyncio.wait_for(harness.core.wait_idle(), 10)
    assert "/new" in harness.channel.texts()[0]
    await harness.core.accept(dm("/stop"))
    await asyncio.wait_for(harness.core.wait_idle(), 10)
    assert harness.channel.texts()[-1] == "Nothing is running."
    assert harness.router.calls == []


async def test_a_command_answers_what_waited_before_it(harness):
    await harness.start(config=_config(harness.tmp_path, 60_000))
    await harness.core.accept(dm("hello there"))
    await harness.core.accept(dm("/status"))
    await asyncio.wait_for(harness.core.wait_idle(), 10)
    assert harness.channel.texts()[0] == "echo: hello there"  # in order, not a minute later
    assert len(harness.channel.texts()) == 2


async def test_the_ack_does_not_wait_for_the_window(harness):
    channel = ReactingChannel()
    await harness.start(channel=channel, config=_config(harness.tmp_path, 60_000))
    await harness.core.accept(dm("hello", msg_id="m1"))
    await asyncio.wait_for(channel.reacted.wait(), 10)
    assert channel.reactions == [("m1", EYES)] and harness.router.calls == []
    await harness.crash()  # the message waits in the store for the next start


async def test_a_steady_drip_is_answered_after_at_most_four_windows(harness):
    """Every message re-arms the wait, but it never lasts beyond 4 x debounceMs from the
    first: a chatty sender is answered while still writing."""
    await harness.start(config=_config(harness.tmp_path, 300))
    sent = 0
    for _ in range(200):  # up to 20 s of messages, 0.1 s apart (each inside the window)
        await harness.core.accept(dm(f"part {sent}"))
        sent += 1
        if harness.router.chat_calls:
            break
        await asyncio.sleep(0.1)
    assert harness.router.chat_calls, "the drip starved the session"
    # Each message takes at least 0.1 s, so within the 1.2 s cap at most about 12 go
    # out before the answer starts (more room for a slow machine's worker start; a cap
    # of 8 windows or none at all would let far more through).
    assert sent <= 20, sent
    await harness.crash()


async def test_debounced_messages_survive_a_stop_and_are_answered_after_a_restart(harness):
    await harness.start(config=_config(harness.tmp_path, 60_000))
    await harness.core.accept(dm("remember me"))
    await harness.crash()
    assert harness.router.calls == []
    await harness.start(config=_config(harness.tmp_path, 0))
    await _idle(harness)
    assert harness.channel.texts() == ["echo: remember me"]
