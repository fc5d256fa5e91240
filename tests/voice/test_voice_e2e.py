"""Voice notes end to end: the fake Bot API <- real PTB <- App (store, core, router) ->
the fake chat server and the fake transcription/speech servers, with real Ogg/Opus bytes
made in the test.

Transcription routing and fallback, transcripts stored and reused by later turns, the
limits, the group rules (a stranger's voice is never downloaded; transcribeForMentions),
echoTranscript, spoken replies (replyWithVoice whenVoice/always, long answers spoken up
to maxChars then sent whole as text) and every failure path ending in a text answer.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from bridge.config.schema import Config
from bridge.voice.audio import is_ogg_opus
from channels.telegram import TelegramChannel
from tests.fakes.audio_bytes import ogg_opus_bytes, wav_bytes
from tests.fakes.audio_server import FakeAudioServer
from tests.fakes.model_server import FakeModelServer

BOT = "palaver_test_bot"
GROUP = -100777
ANN = 1001
STRANGER = 2002


@pytest.fixture
async def whisper():
    async with FakeAudioServer() as server:
        yield server


@pytest.fixture
async def whisper2():
    async with FakeAudioServer(profile="localai") as server:
        yield server


@pytest.fixture(autouse=True)
def _fast_polls(monkeypatch):
    monkeypatch.setattr(TelegramChannel, "poll_timeout", 1)
    monkeypatch.setattr(TelegramChannel, "typing_delay", 0)


def make_config(tmp_path, fake, models, whisper, whisper2=None, *, transcription: Any = "stt/whisper-1",
                speech: dict | None = None, telegram: dict | None = None,
                echo: bool = False) -> Config:
    providers: dict[str, Any] = {
        "local": {"baseUrl": models.url_for("openai-completions"), "api": "openai-completions",
                  "models": [{"id": "text", "contextWindow": 32000, "maxTokens": 1000}]},
        "stt": {"baseUrl": whisper.base_url, "api": "openai-completions",
                "models": [{"id": "whisper-1", "kind": "transcription"},
                           {"id": "tts-1", "kind": "speech"}]},
    }
    if whisper2 is not None:
        providers["stt2"] = {"baseUrl": whisper2.base_url, "api": "openai-completions",
                             "models": [{"id": "whisper-base", "kind": "transcription"},
                                        {"id": "voice-en-us-amy-low", "kind": "speech"}]}
    defaults: dict[str, Any] = {"model": {"primary": "local/text"}}
    if transcription is not None:
        defaults["transcription"] = {"model": transcription, "echoTranscript": echo}
    if speech is not None:
        defaults["speech"] = speech
    return Config.model_validate({
        "dataDir": str(tmp_path / "data"),
        "models": {"mode": "replace", "providers": providers},
        "agents": {"defaults": defaults},
        "channels": {"telegram": {"botToken": fake.token, "apiRoot": fake.url,
                                  "dmPolicy": "open", "allowFrom": ["*"],
                                  "groupPolicy": "allowlist", **(telegram or {})}},
        "health": {"enabled": False},
    })


def transcriptions(server: FakeAudioServer) -> list:
    return [r for r in server.requests if r.endpoint == "transcriptions"]


def speeches(server: FakeAudioServer) -> list:
    return [r for r in server.requests if r.endpoint == "speech"]


def prompt_text(models: FakeModelServer, index: int = -1) -> str:
    """Every user turn's text of one chat request (what the model read)."""
    body = models.requests[index].json
    out = []
    for turn in body.get("messages", []):
        content = turn.get("content")
        if isinstance(content, str):
            out.append(content)
        else:
            out.extend(p.get("text", "") for p in content or () if isinstance(p, dict))
    return "\n".join(out)


# --------------------------------------------------------------------------- transcription


async def test_a_voice_note_reaches_the_model_as_its_transcript(fake, models, whisper,
                                                                 tmp_path, run_app):
    app = await run_app(make_config(tmp_path, fake, models, whisper))
    whisper.transcript("see you at eight")
    voice = ogg_opus_bytes(3.0)
    fake.push_voice(ANN, ANN, voice, duration=3)
    [sent] = await fake.wait_for_sent(1)
    [call] = transcriptions(whisper)
    assert call.file is not None and call.file.data == voice  # the real bytes, multipart
    assert call.file.filename == "voice.ogg" or call.file.filename.endswith(".ogg")
    assert call.fields["model"] == "whisper-1"
    assert '[voice note, 3 s, transcript: "see you at eight"]' in prompt_text(models)
    assert "see you at eight" in sent.text
    rows = await app.store.read_with(lambda db: db.execute(
        "SELECT t.text, m.direction FROM transcripts t JOIN messages m"
        " ON m.id = t.message_id").fetchall())
    assert [tuple(r) for r in rows] == [("see you at eight", "in")]


async def test_fallback_then_the_stored_transcript_is_reused(fake, models, whisper, whisper2,
                                                             tmp_path, run_app):
    config = make_config(tmp_path, fake, models, whisper, whisper2, transcription={
        "primary": "stt/whisper-1", "fallbacks": ["stt2/whisper-base"]})
    await run_app(config)
    whisper.error(500, "The server had an error while processing your request.")
    whisper2.transcript("the code is four two")
    fake.push_voice(ANN, ANN, ogg_opus_bytes(2.0), duration=2)
    await fake.wait_for_sent(1)
    assert len(transcriptions(whisper)) == 1 and len(transcriptions(whisper2)) == 1
    assert 'transcript: "the code is four two"' in prompt_text(models)
    # The next turn shows the voice note from the store: nothing is transcribed again.
    fake.push_text(ANN, ANN, "what was the code?")
    await fake.wait_for_sent(2)
    history = prompt_text(models)
    assert 'transcript: "the code is four two"' in history and "what was the code?" in history
    assert len(transcriptions(whisper)) + len(transcriptions(whisper2)) == 2


async def test_every_transcription_failure_still_answers(fake, models, whisper, whisper2,
                                                         tmp_path, run_app):
    config = make_config(tmp_path, fake, models, whisper, whisper2, transcription={
        "primary": "stt/whisper-1", "fallbacks": ["stt2/whisper-base"]})
    await run_app(config)
    whisper.error(500, "secret internal detail sk-live-123")
    whisper2.error(503, "overloaded")
    fake.push_voice(ANN, ANN, ogg_opus_bytes(2.0), duration=2)
    [sent] = await fake.wait_for_sent(1)
    seen = prompt_text(models)
    assert "[voice note, 2 s, could not be transcribed: the transcription service failed]" in seen
    assert "secret internal detail" not in seen and "secret internal detail" not in sent.text


async def test_over_audio_max_seconds_is_not_downloaded_nor_transcribed(fake, models, whisper,
                                                                        tmp_path, run_app):
    await run_app(make_config(tmp_path, fake, models, whisper,
                              telegram={"audioMaxSeconds": 30}))
    fake.push_voice(ANN, ANN, ogg_opus_bytes(1.0), duration=31)
    await fake.wait_for_sent(1)
    assert transcriptions(whisper) == [] and fake.calls_to("getFile") == []
    assert ("[voice note, 31 s, could not be transcribed: not downloaded: 31 s is over the "
            "30 s limit]") in prompt_text(models)


async def test_without_a_transcription_model_the_note_is_a_placeholder(fake, models, whisper,
                                                                       tmp_path, run_app):
    await run_app(make_config(tmp_path, fake, models, whisper, transcription=None))
    fake.push_voice(ANN, ANN, ogg_opus_bytes(2.0), duration=2)
    await fake.wait_for_sent(1)
    assert transcriptions(whisper) == []
    assert "[voice note, 2 s]" in prompt_text(models)


async def test_echo_transcript_quotes_what_was_understood(fake, models, whisper, tmp_path,
                                                          run_app):
    await run_app(make_config(tmp_path, fake, models, whisper, echo=True))
    models.reply("Sure, eight it is.")
    whisper.transcript("see you at eight")
    fake.push_voice(ANN, ANN, ogg_opus_bytes(2.0), duration=2)
    [sent] = await fake.wait_for_sent(1)
    assert sent.parse_mode == "HTML"
    assert sent.text == "<blockquote>🎙 see you at eight</blockquote>\n\nSure, eight it is."
    assert sent.message["text"] == "🎙 see you at eight\n\nSure, eight it is."


async def test_round_video_notes_and_audio_files_are_heard_too(fake, models, whisper,
                                                               tmp_path, run_app):
    await run_app(make_config(tmp_path, fake, models, whisper))
    whisper.transcript("look at this")
    mp4 = b"\0\0\0\x18ftypmp42" + b"\0" * 200
    fake.push_video_note(ANN, ANN, mp4, duration=9)
    await fake.wait_for_sent(1)
    [call] = transcriptions(whisper)
    assert call.file is not None and call.file.data == mp4
    assert call.file.filename is not None and call.file.filename.endswith(".mp4")
    assert '[video, 9 s, round video, transcript: "look at this"]' in prompt_text(models)
    whisper.transcript("minutes of the meeting")
    fake.push_audio(ANN, ANN, ogg_opus_bytes(4.0), duration=4, filename="memo.ogg")
    await fake.wait_for_sent(2)
    assert 'transcript: "minutes of the meeting"' in prompt_text(models)


# --------------------------------------------------------------------------- groups


async def test_a_strangers_voice_is_never_downloaded(fake, models, whisper, tmp_path, run_app):
    await run_app(make_config(tmp_path, fake, models, whisper, telegram={"groups": {
        str(GROUP): {"requireMention": False, "allowFrom": [str(ANN)],
                     "transcribeForMentions": True}}}))
    fake.push_voice(GROUP, STRANGER, ogg_opus_bytes(2.0), duration=2)
    fake.push_text(GROUP, ANN, "hello")
    [sent] = await fake.wait_for_sent(1)
    assert "hello" in sent.text
    assert fake.calls_to("getFile") == [] and transcriptions(whisper) == []
    assert len(models.requests) == 1


async def test_transcribe_for_mentions_hears_the_bots_name(fake, models, whisper, tmp_path,
                                                           run_app):
    app = await run_app(make_config(tmp_path, fake, models, whisper, telegram={"groups": {
        "*": {"requireMention": True, "transcribeForMentions": True}}}))
    whisper.transcript("we are just chatting about lunch")
    fake.push_voice(GROUP, ANN, ogg_opus_bytes(2.0), duration=2)
    await fake.wait_until(lambda: len(transcriptions(whisper)) == 1)
    whisper.transcript("hey palaver test bot what time is it")
    fake.push_voice(GROUP, ANN, ogg_opus_bytes(2.5), duration=3)
    [sent] = await fake.wait_for_sent(1)
    assert sent.chat_id == GROUP and "what time is it" in sent.text
    assert len(models.requests) == 1  # the first note was not for the bot
    # Heard once: the turn did not transcribe the mention again.
    assert len(transcriptions(whisper)) == 2
    # Whisper was told the name to expect.
    assert BOT in transcriptions(whisper)[0].fields.get("prompt", "")
    # The note that was not for the bot keeps no transcript.
    texts = await app.store.read_with(
        lambda db: [r[0] for r in db.execute("SELECT text FROM transcripts")])
    assert texts == ["hey palaver test bot what time is it"]


async def test_without_transcribe_for_mentions_an_unmentioned_voice_is_not_fetched(
        fake, models, whisper, tmp_path, run_app):
    await run_app(make_config(tmp_path, fake, models, whisper, telegram={"groups": {
        "*": {"requireMention": True}}}))
    fake.push_voice(GROUP, ANN, ogg_opus_bytes(2.0), duration=2)
    fake.push_text(GROUP, ANN, f"@{BOT} ping")
    await fake.wait_for_sent(1)
    assert fake.calls_to("getFile") == [] and transcriptions(whisper) == []


# --------------------------------------------------------------------------- spoken replies


async def test_when_voice_a_voice_note_is_answered_in_voice(fake, models, whisper, tmp_path,
                                                            run_app):
    await run_app(make_config(tmp_path, fake, models, whisper, speech={
        "model": "stt/tts-1", "voice": "nova", "replyWithVoice": "whenVoice"}))
    models.reply("Eight works for me.")
    fake.push_voice(ANN, ANN, ogg_opus_bytes(2.0), duration=2)
    [call] = await fake.wait_for_calls("sendVoice")
    [speech] = speeches(whisper)
    assert speech.json == {"model": "tts-1", "input": "Eight works for me.", "voice": "nova",
                           "response_format": "opus"}
    upload = [u for u in fake.uploads if u.method == "sendVoice"][0]
    assert is_ogg_opus(upload.data) and call.params["duration"] == "1"
    await asyncio.sleep(0.2)
    assert fake.sent == []  # all of it was spoken: no text message
    # A text message gets a text answer.
    fake.push_text(ANN, ANN, "and in writing?")
    await fake.wait_for_sent(1)
    assert len(fake.calls_to("sendVoice")) == 1


async def test_always_speaks_text_too_and_long_answers_follow_as_text(fake, models, whisper,
                                                                       tmp_path, run_app):
    await run_app(make_config(tmp_path, fake, models, whisper, speech={
        "model": "stt/tts-1", "replyWithVoice": "always", "maxChars": 60}))
    long = "The first part is short. " + "Then it goes on and on at length. " * 5
    models.reply(long)
    fake.push_text(ANN, ANN, "tell me everything")
    [sent] = await fake.wait_for_sent(1)
    [speech] = speeches(whisper)
    spoken = speech.json["input"]
    assert spoken == "The first part is short. Then it goes on and on at length."
    assert len(spoken) <= 60 and long.startswith(spoken)  # whole sentences, within maxChars
    assert len(fake.calls_to("sendVoice")) == 1
    assert sent.text == long.strip()  # the whole text follows the voice
    methods = [c.method for c in fake.calls if c.method in ("sendVoice", "sendMessage")]
    assert methods == ["sendVoice", "sendMessage"]


@pytest.mark.parametrize("failure", ["error", "not_opus", "hang"])
async def test_every_speech_failure_ends_in_the_text(fake, models, whisper, tmp_path,
                                                     run_app, failure, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "no-ffmpeg-here"))
    speech = {"model": "stt/tts-1", "replyWithVoice": "always"}
    config = make_config(tmp_path, fake, models, whisper, speech=speech)
    if failure == "hang":
        providers = dict(config.models.providers)
        providers["stt"] = providers["stt"].model_copy(update={"timeoutSeconds": 1})
        config = config.model_copy(update={"models": config.models.model_copy(
            update={"providers": providers})})
    await run_app(config)
    models.reply("Here is the answer.")
    if failure == "error":
        whisper.error(500, "tts backend crashed")
    elif failure == "not_opus":
        whisper.audio(wav_bytes(1.0), content_type="audio/wav")  # and no ffmpeg to convert
    else:
        whisper.hang()
    fake.push_text(ANN, ANN, "hi")
    [sent] = await fake.wait_for_sent(1, timeout=10)
    assert sent.text == "Here is the answer."
    assert fake.calls_to("sendVoice") == []


async def test_a_refused_voice_message_ends_in_the_text(fake, models, whisper, tmp_path,
                                                        run_app, caplog):
    await run_app(make_config(tmp_path, fake, models, whisper, speech={
        "model": "stt/tts-1", "replyWithVoice": "whenVoice"}))
    fake.voice_forbidden.add(ANN)
    models.reply("In writing, then.")
    with caplog.at_level(logging.WARNING):
        fake.push_voice(ANN, ANN, ogg_opus_bytes(2.0), duration=2)
        [sent] = await fake.wait_for_sent(1)
    assert sent.text == "In writing, then."
    assert len(fake.calls_to("sendVoice")) == 1
    assert "voice_messages_forbidden" in caplog.text.lower()
