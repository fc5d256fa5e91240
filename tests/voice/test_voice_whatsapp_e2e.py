"""Voice notes end to end on WhatsApp: a real PTT ``audioMessage`` (real Ogg/Opus bytes)
through Palaver's NeonizeClient and the fake NewAClient, the App, the fake chat server
and the fake audio server; the answer goes back as a WhatsApp voice note (Upload +
``audioMessage`` with PTT), or as text when speech fails."""

from __future__ import annotations

import pytest
from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as E

from bridge.app import App
from bridge.config.schema import Config
from bridge.media import MediaStore
from bridge.voice.audio import is_ogg_opus
from tests.channels.test_whatsapp_fake import until
from tests.channels.test_whatsapp_neonize import ANN, ANN_JID, channel_for, db_of
from tests.channels.test_whatsapp_voice import _voice_event
from tests.fakes.audio_bytes import ogg_opus_bytes
from tests.fakes.audio_server import FakeAudioServer
from tests.fakes.neonize_fake import install_bounded


@pytest.fixture
def go(monkeypatch):
    fake = install_bounded(monkeypatch)
    yield fake
    fake.release()


@pytest.fixture
async def whisper():
    async with FakeAudioServer() as server:
        yield server


async def _app(tmp_path, go, models, whisper) -> App:
    config = Config.model_validate({
        "dataDir": str(tmp_path / "data"),
        "models": {"mode": "replace", "providers": {
            "local": {"baseUrl": models.url_for("openai-completions"),
                      "api": "openai-completions", "models": [{"id": "text"}]},
            "stt": {"baseUrl": whisper.base_url, "api": "openai-completions",
                    "models": [{"id": "whisper-1", "kind": "transcription"},
                               {"id": "tts-1", "kind": "speech"}]}}},
        "agents": {"defaults": {
            "model": "local/text", "transcription": {"model": "stt/whisper-1"},
            "speech": {"model": "stt/tts-1", "replyWithVoice": "whenVoice"}}},
        # No 👀 acknowledgement: these tests read the replies (reactions have their own,
        # tests/channels/test_whatsapp_live.py).
        "channels": {"whatsapp": {"dmPolicy": "allowlist", "allowFrom": ["+" + ANN],
                                  "ackReaction": ""}},
        "health": {"enabled": False},
    })
    go.link(db_of(tmp_path))
    channel = channel_for(tmp_path)
    channel._media = MediaStore(tmp_path / "data" / "media")  # the App's, as build_channels does
    app = App(config, channels=[channel])
    await app.start()
    await until(lambda: channel.health().detail.startswith("connected as"))
    return app


async def test_a_whatsapp_voice_note_is_heard_and_answered_as_a_voice_note(
        tmp_path, go, models, whisper):
    app = await _app(tmp_path, go, models, whisper)
    try:
        ogg = ogg_opus_bytes(5.0)
        go.download_data = ogg
        whisper.transcript("is the shop open on sunday")
        models.reply("Yes, from ten to four.")
        go.deliver(_voice_event(ogg, seconds=5, msg_id="PTT1"))
        await until(lambda: go.sent, limit_s=5)
        [transcription, speech] = whisper.requests
        assert transcription.file is not None and transcription.file.data == ogg
        assert speech.json["input"] == "Yes, from ten to four."
        prompt = models.requests[-1].last_user_text()
        assert '[voice note, 5 s, transcript: "is the shop open on sunday"]' in prompt
        [(to, message)] = go.sent
        assert to == ANN_JID and message.HasField("audioMessage")
        audio = E.Message.FromString(message.SerializeToString()).audioMessage
        assert audio.PTT and audio.mimetype == "audio/ogg; codecs=opus" and audio.seconds == 1
        [(uploaded, _type)] = go.uploads
        assert is_ogg_opus(uploaded)
    finally:
        await app.stop(grace=0)


async def test_when_the_voice_note_cannot_be_sent_the_text_goes(tmp_path, go, models, whisper):
    app = await _app(tmp_path, go, models, whisper)
    try:
        go.download_data = ogg_opus_bytes(2.0)
        go.upload_errors.append("failed to upload: unexpected status 500")
        models.reply("In writing, then.")
        go.deliver(_voice_event(go.download_data, seconds=2, msg_id="PTT2"))
        await until(lambda: go.sent, limit_s=5)
        assert [m.conversation for _, m in go.sent] == ["In writing, then."]
    finally:
        await app.stop(grace=0)
