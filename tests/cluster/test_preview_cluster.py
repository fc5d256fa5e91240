"""Edit-mode live previews when the process streaming one dies (issue 20): its turn is
reaped and answered again by another process; the dead process's preview message (its id
stored in reply_previews as soon as it existed) is deleted by the reaper, not left next
to the new reply.  Two cores on one PostgreSQL store in this test process."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import replace

from bridge.envelope import AcceptStatus
from bridge.ports import PreviewKey, PreviewMode
from tests.cluster.cores import HANG_GUARD_S, rows_of, two_cores
from tests.core.helpers import RecordingChannel, dm, make_config


class Chat:
    """The platform's side: the messages the chat shows now, by id (previews are real
    messages in edit mode)."""

    def __init__(self) -> None:
        self.shown: dict[str, str] = {}
        self.ids = itertools.count(1)
        self.changed = asyncio.Event()


class EditPreview:
    mode = PreviewMode.EDIT

    def __init__(self, chat: Chat, chat_id: str, on_created) -> None:
        self.chat = chat
        self.chat_id = chat_id
        self.on_created = on_created
        self.message_id: str | None = None

    async def update(self, text: str, *, restart: bool = False) -> None:
        if self.message_id is None:  # sendMessage, then the core stores its id
            self.message_id = f"{self.chat_id}:{next(self.chat.ids)}"
            self.chat.shown[self.message_id] = text
            if self.on_created is not None:
                await self.on_created(PreviewKey(PreviewMode.EDIT, self.message_id))
        else:  # editMessageText
            self.chat.shown[self.message_id] = text
        self.chat.changed.set()

    async def delete(self) -> None:
        if self.message_id is not None:
            self.chat.shown.pop(self.message_id, None)
            self.chat.changed.set()


class EditChannel(RecordingChannel):
    """One process's Telegram channel in edit-mode streaming, on the shared chat."""

    def __init__(self, chat: Chat) -> None:
        super().__init__()
        self.chat = chat
        self.capabilities = replace(self.capabilities,
                                    preview_modes=frozenset({PreviewMode.EDIT}))
        self.discarded: list[str] = []

    def preview(self, address, mode, *, turn_id, reply_to=None, on_created=None):
        if mode is not PreviewMode.EDIT:
            return None
        return EditPreview(self.chat, address.chat_id, on_created)

    def may_preview_now(self, address) -> bool:
        return True

    async def discard_preview(self, address, key: PreviewKey) -> None:
        self.discarded.append(key.platform_id)
        self.chat.shown.pop(key.platform_id, None)  # deleteMessage
        self.chat.changed.set()

    async def send(self, out, progress=None):
        ids = await super().send(out, progress)
        if out.edit_message_id is not None:  # chunk 0 replaces the turn's own preview
            self.chat.shown[out.edit_message_id] = out.text
            return [out.edit_message_id]
        message_id = f"{out.address.chat_id}:{next(self.chat.ids)}"
        self.chat.shown[message_id] = out.text
        self.chat.changed.set()
        return ids and [message_id]


async def _until(chat: Chat, predicate) -> None:
    async def wait() -> None:
        while not predicate():
            chat.changed.clear()
            await chat.changed.wait()

    await asyncio.wait_for(wait(), HANG_GUARD_S)


async def test_the_dead_owners_preview_is_removed_when_its_turn_is_answered_again(
        tmp_path, pg_url):
    chat = Chat()
    channels = [EditChannel(chat), EditChannel(chat)]
    config = make_config(tmp_path, channels={"telegram": {
        "dmPolicy": "open", "allowFrom": ["*"], "streaming": "edit"}})
    never = asyncio.Event()
    routers = []

    async def streams_then_hangs(_ref, _req) -> str:
        listener = routers[0].listeners[-1]
        listener.text("Once upon a time there was a very long story that ")
        await never.wait()
        return "never"

    async with two_cores(config, pg_url, (streams_then_hangs, None), channels) as (a, b):
        routers.append(a.core.router)
        message = dm("tell me a story", msg_id="m1")
        key = str(message.session_key)
        assert await a.core.accept(message) is AcceptStatus.ACCEPTED
        await _until(chat, lambda: len(chat.shown) == 1)  # A's preview is up
        [preview_id] = chat.shown
        assert "Once upon a time" in chat.shown[preview_id]
        # ... and its id is on record before any further update.
        turn_id = a.core._active.running(key)
        assert turn_id is not None
        assert await a.store.preview_for_turn(turn_id) == PreviewKey(PreviewMode.EDIT,
                                                                     preview_id)
        await a.coord.abandon()  # A dies mid-stream (kill -9: its connection is gone)
        reaped = await b.coord.reap_dead()
        assert reaped == {key}
        await b.coord.sweep(reaped)  # what the reaper's loop does after a reap
        await _until(chat, lambda: preview_id not in chat.shown
                     and any("tell me a story" in t for t in chat.shown.values()))
        await asyncio.wait_for(b.core.wait_idle(), HANG_GUARD_S)
        assert channels[1].discarded == [preview_id]
        assert list(chat.shown.values()) == ["echo: tell me a story"]  # nothing else
        assert await b.store.preview_for_turn(turn_id) is None  # forgotten
        never.set()


async def test_a_process_starting_removes_previews_of_turns_interrupted_with_theirs(
        tmp_path, pg_url):
    """The reaper could not remove the preview (it does not serve that chat, or the
    delete failed): any process serving it removes it when it starts — only previews
    of interrupted turns, never one a running peer streams into."""
    chat = Chat()
    config = make_config(tmp_path)
    async with two_cores(config, pg_url, (None,), [EditChannel(chat)]) as [a]:
        first, running = dm("one", msg_id="m1"), dm("two", sender="43", msg_id="m2")
        ids = []
        for inbound in (first, running):
            key = str(inbound.session_key)
            assert await a.coord.acquire(key)
            await a.store.record_inbound(inbound)
            claim = await a.store.claim_next(key)
            assert claim is not None
            pid = f"{inbound.address.chat_id}:{next(chat.ids)}"
            chat.shown[pid] = "a preview …"
            await a.store.save_preview(claim.turn_id, inbound.address,
                                       PreviewKey(PreviewMode.EDIT, pid))
            ids.append((claim.turn_id, pid))
        (dead_turn, dead_pid), (live_turn, live_pid) = ids
        await a.store.requeue_turn(dead_turn)  # interrupted, as a reap leaves it
        assert list(await a.store.read_with(rows_of(
            str(first.session_key), "SELECT status FROM turns WHERE session_key = ?"))) \
            == [("interrupted",)]
        await a.core.stop(grace=0)
        await a.core.start()  # a process (re)starting with peers on the store
        await _until(chat, lambda: dead_pid not in chat.shown)
        assert live_pid in chat.shown  # a running turn's preview is its process's
        assert await a.store.preview_for_turn(dead_turn) is None
        assert await a.store.preview_for_turn(live_turn) is not None
