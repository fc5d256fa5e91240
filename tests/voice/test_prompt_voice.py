"""prompt.with_transcripts: a window's voice notes (history, current, quoted) shown with
their stored outcome in one store read; the prompt and the compaction transcript then
carry the transcript; a window without voice is left as it is."""

from __future__ import annotations

import time

import pytest

from bridge.envelope import ChatAddress, ChatKind, MediaKind, MediaRef, Quoted
from bridge.media import MediaStore
from bridge.prompt import transcript, user_text, with_transcripts
from bridge.store import MessageKind, MessageStatus, Store, StoredMessage
from bridge.store.records import HistoryTurn
from bridge.store.transcripts import TranscriptQueries
from bridge.voice.notes import VoiceNotes
from bridge.voice.service import InOrder, Transcriber

ADDRESS = ChatAddress("telegram", "default", "42", ChatKind.DIRECT)


def msg(msg_id: int, text: str = "", media: tuple[MediaRef, ...] = (),
        quoted: Quoted | None = None) -> StoredMessage:
    return StoredMessage(
        id=msg_id, direction="in", role="user", kind=MessageKind.CHAT, session_key="s",
        session_id=1, turn_id=1, address=ADDRESS, platform_message_id=str(msg_id),
        sender_id="42", sender_name="Ann", mentioned=False, text=text, media=media,
        quoted=quoted, status=MessageStatus.ANSWERED, reason=None, model_ref=None, reply_to_message_id=None,
        delivered=False, created_at=time.time())


@pytest.fixture
async def notes(tmp_path):
    store = await Store.open(tmp_path / "p.db")
    n = VoiceNotes(Transcriber(InOrder(), None), TranscriptQueries(store),  # type: ignore[arg-type]
                   MediaStore(tmp_path / "media"))
    yield n
    await store.close()


async def test_history_current_and_quoted_voice_notes_show_their_transcripts(notes):
    q = notes.transcripts
    await q.put("old", "ok", text="buy milk", duration_s=4.0)
    await q.put("now", "failed", reason="the transcription service failed", duration_s=2.0)
    await q.put("quoted", "ok", text="meet at noon", duration_s=6.0)
    old = MediaRef(MediaKind.VOICE, "old", "audio/ogg", duration_s=4.0)
    now = MediaRef(MediaKind.VOICE, "now", "audio/ogg", duration_s=2.0)
    quoted = Quoted("9", media=(MediaRef(MediaKind.VOICE, "quoted", duration_s=6.0),))
    image = MediaRef(MediaKind.IMAGE, "img")
    history = [HistoryTurn(1, (msg(1, media=(old, image)),), "noted")]
    current = [msg(2, "and this?", media=(now,), quoted=quoted)]
    reads = []

    async def annotate_all(lists):
        reads.append(len(lists))
        return await notes.annotate_all(lists)

    turns, cur = await with_transcripts(history, current, annotate_all)
    assert reads == [4]  # one read for the whole window
    assert turns[0].user[0].media[0].placeholder() == (
        '[voice note, 4 s, transcript: "buy milk"]')
    assert turns[0].user[0].media[1] is image
    assert cur[0].media[0].placeholder() == (
        "[voice note, 2 s, could not be transcribed: the transcription service failed]")
    assert 'transcript: "meet at noon"' in user_text(cur[0], group=False)
    assert 'transcript: "buy milk"' in transcript(turns, group=False)


async def test_a_window_without_voice_is_not_read(notes):
    history = [HistoryTurn(1, (msg(1, "hi"),), "hello")]
    current = [msg(2, "again")]

    async def annotate_all(lists):
        raise AssertionError("no voice, no read")

    turns, cur = await with_transcripts(history, current, annotate_all)
    assert turns == history and cur == current
