"""The turn side of /stop and of live previews (issue 17), over a real store.

/stop is driven through the core's ``ActiveTurns`` here (the door's own tests send a real
"/stop" message); the preview through a channel that records what each preview showed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from bridge.envelope import ChatAddress
from bridge.models.base import ErrorClass, ModelError
from bridge.ports import PreviewKey, PreviewMode, SendError
from bridge.store.records import STOPPED_REASON, MessageStatus, StoredMessage
from tests.core.helpers import RecordingChannel, dm, group, make_config

QUESTION = "tell me a long story"


@dataclass
class ShownPreview:
    """A Preview recording its updates (edit mode: a message id once it "exists")."""

    mode: PreviewMode
    address: ChatAddress
    on_created: object
    updates: list[tuple[str, bool]] = field(default_factory=list)
    deleted: bool = False
    message_id: str | None = None
    shown: asyncio.Event = field(default_factory=asyncio.Event)

    async def update(self, text: str, *, restart: bool = False) -> None:
        if self.mode is PreviewMode.EDIT and self.message_id is None:
            self.message_id = f"{self.address.chat_id}:900"
            await self.on_created(PreviewKey(PreviewMode.EDIT, self.message_id))  # type: ignore[operator]
        self.updates.append((text, restart))
        if text:
            self.shown.set()

    async def delete(self) -> None:
        self.deleted = True


class PreviewChannel(RecordingChannel):
    """A RecordingChannel that can show drafts and edited previews."""

    def __init__(self) -> None:
        super().__init__()
        self.capabilities = type(self.capabilities)(
            4000, self.capabilities.markup,
            preview_modes=frozenset({PreviewMode.DRAFT, PreviewMode.EDIT}))
        self.previews: list[ShownPreview] = []
        self.typing_open = 0
        self.typing_opened = asyncio.Event()
        self.discarded: list[PreviewKey] = []

    def preview(self, address, mode, *, turn_id, reply_to=None, on_created=None):
        p = ShownPreview(mode, address, on_created)
        self.previews.append(p)
        return p

    def may_preview_now(self, address) -> bool:
        return True

    async def discard_preview(self, address, key) -> None:
        self.discarded.append(key)

    @contextlib.asynccontextmanager
    async def typing(self, address):
        self.typing_count += 1
        self.typing_open += 1
        self.typing_opened.set()
        try:
            yield
        finally:
            self.typing_open -= 1


class Reactions:
    """A TurnReactions recording what the turn told it."""

    def __init__(self) -> None:
        self.failed_for: list[list[int]] = []
        self.cleared_for: list[list[int]] = []

    def failed(self, messages: Sequence[StoredMessage]) -> None:
        self.failed_for.append([m.id for m in messages])

    def clear(self, messages: Sequence[StoredMessage]) -> None:
        self.cleared_for.append([m.id for m in messages])


class Streaming:
    """A behaviour: shows ``partial`` through the call's listener, then hangs until
    cancelled (``cancelled`` set) or released with ``answer``."""

    def __init__(self, harness, partial: str = "Once upon a time ") -> None:
        self.harness = harness
        self.partial = partial
        self.asked = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.release = asyncio.Event()
        self.answer = "The end."
        self.chat_hangs = True
        self.compaction_hangs = False
        self.heard: list[tuple[bool, object]] = []  # (compaction?, the call's listener)

    async def __call__(self, ref, req):
        listener = self.harness.router.listeners[-1]
        compaction = bool(req.instructions and req.instructions.startswith("You condense"))
        self.heard.append((compaction, listener))
        if compaction:
            if self.compaction_hangs:
                self.asked.set()
                await self._hang()
            return "SUMMARY of the talk"
        if listener is not None and self.partial:
            listener.text(self.partial)
        if self.chat_hangs:
            self.asked.set()
            await self._hang()
        return self.answer

    async def _hang(self) -> None:
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


async def _start(harness, behaviour=None, **config):
    harness.config = make_config(harness.tmp_path, **config)
    channel = PreviewChannel()
    core = await harness.start(behaviour=behaviour, channel=channel)
    reactions = Reactions()
    core._turns.reactions = reactions
    return core, channel, reactions


async def _turn_of(harness, platform_id: str):
    msgs = await harness.store.messages_for(_key(harness))
    (msg,) = [m for m in msgs if m.platform_message_id == platform_id]
    return msg, await harness.store.turn(msg.turn_id)


def _key(harness) -> str:
    return "telegram:default:direct:42"


async def test_stop_mid_answer_ends_the_turn_with_no_reply(harness):
    slow = Streaming(harness)
    core, channel, reactions = await _start(harness, slow)
    await core.accept(dm(QUESTION, msg_id="q1"))
    await asyncio.wait_for(slow.asked.wait(), 10)
    (preview,) = channel.previews
    await asyncio.wait_for(preview.shown.wait(), 10)
    assert core._turns.active.running(_key(harness)) is not None
    assert core._turns.active.stop(_key(harness)) is True
    await asyncio.wait_for(core.wait_idle(), 10)
    assert slow.cancelled.is_set()  # the model call was cancelled (its stream closes)
    assert channel.sent == []  # no apology, no partial answer
    msg, turn = await _turn_of(harness, "q1")
    assert msg.status is MessageStatus.FAILED and msg.reason == STOPPED_REASON
    assert turn.status == "failed" and turn.reason == STOPPED_REASON
    (event,) = harness.turns()
    assert event.answered is False and event.reason == STOPPED_REASON
    assert reactions.cleared_for == [[msg.id]] and reactions.failed_for == []
    assert core.pending_count() == 0
    assert core._turns.active.running(_key(harness)) is None
    # The next message is answered normally.
    slow.partial, slow.release = "", asyncio.Event()
    slow.release.set()
    await harness.say(dm("and now?", msg_id="q2"))
    assert channel.texts() == ["The end."]


async def test_a_stopped_turn_is_not_answered_after_a_restart(harness):
    slow = Streaming(harness)
    core, channel, _ = await _start(harness, slow)
    await core.accept(dm(QUESTION, msg_id="q1"))
    await asyncio.wait_for(slow.asked.wait(), 10)
    core._turns.active.stop(_key(harness))
    await asyncio.wait_for(core.wait_idle(), 10)
    await harness.crash()
    slow.release.set()
    await harness.start(behaviour=slow, channel=PreviewChannel())
    await asyncio.wait_for(harness.core.wait_idle(), 10)
    assert harness.channel.sent == [] and len(harness.router.chat_calls) == 0


async def test_stop_in_edit_mode_deletes_the_preview_and_its_record(harness):
    slow = Streaming(harness, partial="A partial answer that is long enough to show. ")
    core, channel, _ = await _start(harness, slow, channels__telegram__streaming="edit")
    await core.accept(dm(QUESTION, msg_id="q1"))
    await asyncio.wait_for(slow.asked.wait(), 10)
    (preview,) = channel.previews
    await asyncio.wait_for(preview.shown.wait(), 10)
    msg, _ = await _turn_of(harness, "q1")
    assert await harness.store.preview_for_turn(msg.turn_id) == PreviewKey(
        PreviewMode.EDIT, "42:900")
    core._turns.active.stop(_key(harness))
    await asyncio.wait_for(core.wait_idle(), 10)
    assert preview.deleted
    assert await harness.store.preview_for_turn(msg.turn_id) is None


async def test_stop_while_waiting_for_a_turn_slot(harness):
    slow = Streaming(harness, partial="")
    core, channel, _ = await _start(harness, slow,
                                    agents__defaults__maxConcurrentTurns=1)
    await core.accept(group("first, in a group", msg_id="g1"))
    await asyncio.wait_for(slow.asked.wait(), 10)
    await core.accept(dm(QUESTION, msg_id="q1"))  # waits for the one slot
    await asyncio.sleep(0.1)
    assert len(harness.router.chat_calls) == 1
    assert core._turns.active.stop(_key(harness)) is True
    slow.release.set()
    await asyncio.wait_for(core.wait_idle(), 10)
    _, turn = await _turn_of(harness, "q1")
    assert turn.reason == STOPPED_REASON
    assert channel.texts() == ["The end."]  # the group's turn was not touched
    assert len(harness.router.chat_calls) == 1


SMALL_WINDOW = {
    "models": {"mode": "replace", "providers": {"local": {
        "baseUrl": "http://127.0.0.1:9/v1", "api": "openai-completions",
        "models": [{"id": "small", "contextWindow": 3000, "maxTokens": 1000}]}}},
    "agents": {"defaults": {"model": "local/small", "compaction": {"keepRecentTurns": 2}}},
}


async def test_stop_during_compaction_stores_no_summary(harness):
    slow = Streaming(harness, partial="")
    slow.chat_hangs, slow.compaction_hangs = False, True
    core, channel, _ = await _start(harness, slow, **SMALL_WINDOW)
    for i in range(12):
        await core.accept(dm(f"turn{i} " + "x" * 600, msg_id=f"t{i}"))
        idle = asyncio.ensure_future(core.wait_idle())
        asked = asyncio.ensure_future(slow.asked.wait())
        await asyncio.wait({idle, asked}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        idle.cancel()
        asked.cancel()
        if slow.asked.is_set():
            break
    assert slow.asked.is_set(), "the history never needed compacting"
    assert harness.router.calls[-1].is_compaction
    assert core._turns.active.stop(_key(harness)) is True
    await asyncio.wait_for(core.wait_idle(), 10)
    assert slow.cancelled.is_set()
    _, turn = await _turn_of(harness, f"t{i}")
    assert turn.reason == STOPPED_REASON
    session = await harness.store.active_session(_key(harness))
    assert session is not None and not session.summary


async def test_nothing_is_running_once_the_reply_is_stored(harness):
    delivering = asyncio.Event()
    release = asyncio.Event()
    core, channel, _ = await _start(harness)
    real_send = channel.send

    async def slow_send(out, progress=None):
        delivering.set()
        await release.wait()
        return await real_send(out, progress)

    channel.send = slow_send  # type: ignore[method-assign]
    await core.accept(dm("hello there", msg_id="q1"))
    await asyncio.wait_for(delivering.wait(), 10)
    assert core._turns.active.stop(_key(harness)) is False  # a delivery is never cut
    release.set()
    await asyncio.wait_for(core.wait_idle(), 10)
    assert channel.texts() == ["echo: hello there"]


# -- the preview within a turn --------------------------------------------------------


async def test_a_draft_preview_replaces_typing_and_ends_before_the_reply(harness):
    core, channel, _ = await _start(harness, lambda ref, req: "Paris is the capital.")
    await harness.say(dm("capital of France?", msg_id="q1"))
    (preview,) = channel.previews
    assert preview.mode is PreviewMode.DRAFT
    assert channel.typing_count == 0  # the draft's "Thinking…" is the indicator
    assert channel.texts() == ["Paris is the capital."]
    assert channel.sent[0].edit_message_id is None  # drafts are never edited into the reply
    (listener,) = harness.router.listeners
    assert listener is not None and listener.mode is PreviewMode.DRAFT


async def test_typing_comes_back_when_the_draft_preview_is_refused(harness):
    from bridge.ports import PreviewGone

    slow = Streaming(harness, partial="Some words here ")
    core, channel, _ = await _start(harness, slow)

    async def refuse(text, *, restart=False):
        raise PreviewGone("TEXTDRAFT_PEER_INVALID")

    await core.accept(dm(QUESTION, msg_id="q1"))
    await asyncio.wait_for(slow.asked.wait(), 10)
    assert channel.typing_open == 0
    (preview,) = channel.previews
    preview.update = refuse  # type: ignore[method-assign]
    harness.router.listeners[-1].text("more words ")
    await asyncio.wait_for(channel.typing_opened.wait(), 10)
    assert channel.typing_open == 1
    slow.release.set()
    await asyncio.wait_for(core.wait_idle(), 10)
    assert channel.typing_open == 0 and channel.texts() == ["The end."]


async def test_edit_mode_reply_edits_the_preview_as_chunk_zero(harness):
    slow = Streaming(harness, partial="A partial answer that is long enough to show. ")
    core, channel, _ = await _start(harness, slow, channels__telegram__streaming="edit")
    await core.accept(dm(QUESTION, msg_id="q1"))
    await asyncio.wait_for(slow.asked.wait(), 10)
    (preview,) = channel.previews
    await asyncio.wait_for(preview.shown.wait(), 10)
    assert channel.typing_count == 1  # edit mode keeps typing on
    slow.release.set()
    await asyncio.wait_for(core.wait_idle(), 10)
    (out,) = channel.sent
    assert out.edit_message_id == "42:900" and out.text == "The end."
    msg, _ = await _turn_of(harness, "q1")
    assert await harness.store.preview_for_turn(msg.turn_id) is None  # forgotten once sent
    assert all(not restart for _, restart in preview.updates)


async def test_the_apology_goes_through_the_edit_preview_and_marks_failure(harness):
    state = {"n": 0}

    def broken(ref, req):
        listener = harness.router.listeners[-1]
        state["n"] += 1
        listener.text("Half of an answer that is long enough to show now. ")
        raise ModelError(ErrorClass.UNREACHABLE, "connection reset")

    core, channel, reactions = await _start(harness, broken,
                                            channels__telegram__streaming="edit")
    await harness.say(dm(QUESTION, msg_id="q1"))
    (out,) = channel.sent
    assert out.edit_message_id == "42:900" and "unavailable" in out.text
    msg, _ = await _turn_of(harness, "q1")
    assert reactions.failed_for == [[msg.id]]


async def test_a_reply_that_fails_for_good_before_chunk_zero_removes_the_preview(harness):
    slow = Streaming(harness, partial="A partial answer that is long enough to show. ")
    core, channel, _ = await _start(harness, slow, channels__telegram__streaming="edit")
    channel.failures = [SendError("chat not found")]
    await core.accept(dm(QUESTION, msg_id="q1"))
    await asyncio.wait_for(slow.asked.wait(), 10)
    (preview,) = channel.previews
    await asyncio.wait_for(preview.shown.wait(), 10)
    slow.release.set()
    await asyncio.wait_for(core.wait_idle(), 10)
    assert channel.discarded == [PreviewKey(PreviewMode.EDIT, "42:900")]
    msg, _ = await _turn_of(harness, "q1")
    assert await harness.store.preview_for_turn(msg.turn_id) is None


@pytest.mark.parametrize("where", ["provider", "off"])
async def test_no_preview_when_the_model_or_the_chat_says_so(harness, where):
    if where == "provider":
        options = {"models__providers__local__preview": False}
    else:
        options = {"channels__telegram__streaming": "off"}
    core, channel, _ = await _start(harness, **options)
    await harness.say(dm("hi", msg_id="q1"))
    assert channel.previews == [] and harness.router.listeners == [None]
    assert channel.typing_count == 1 and channel.texts() == ["echo: hi"]


async def test_compaction_never_feeds_the_preview(harness):
    slow = Streaming(harness, partial="")
    slow.chat_hangs = False
    core, channel, _ = await _start(harness, slow, **SMALL_WINDOW)
    for i in range(12):
        await harness.say(dm(f"turn{i} " + "x" * 600, msg_id=f"t{i}"))
    assert any(compaction for compaction, _ in slow.heard), "nothing was compacted"
    assert all((listener is None) == compaction for compaction, listener in slow.heard)


async def test_a_crash_while_the_stopped_preview_is_removed_does_not_answer_it(
        harness, monkeypatch):
    """"Stopped." is stored at the door; the turn must be closed before the (slow)
    preview removal, or a crash in between answers the stopped question after all."""
    slow = Streaming(harness, partial="A partial answer that is long enough to show. ")
    core, channel, _ = await _start(harness, slow, channels__telegram__streaming="edit")
    gate = asyncio.Event()
    deleting = asyncio.Event()

    async def slow_delete(self):
        deleting.set()
        await gate.wait()  # Telegram slow to answer deleteMessage
        self.deleted = True

    monkeypatch.setattr(ShownPreview, "delete", slow_delete)
    await core.accept(dm(QUESTION, msg_id="q1"))
    await asyncio.wait_for(slow.asked.wait(), 10)
    (preview,) = channel.previews
    await asyncio.wait_for(preview.shown.wait(), 10)
    await core.accept(dm("/stop", msg_id="s1"))
    await asyncio.wait_for(deleting.wait(), 10)
    await harness.crash()  # the process dies while the removal is in flight
    slow.release.set()
    slow.chat_hangs = False
    await harness.start(behaviour=slow, channel=PreviewChannel())
    await asyncio.wait_for(harness.core.wait_idle(), 10)
    assert harness.router.chat_calls == []  # the stopped question is not asked again
    assert harness.channel.texts() == ["Stopped."]
