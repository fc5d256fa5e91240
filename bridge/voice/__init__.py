"""Voice notes: speech-to-text and text-to-speech over OpenAI's audio API.

- :mod:`bridge.voice.client`: one call on the wire (multipart transcription, JSON speech),
  failures classified into the model error classes;
- :mod:`bridge.voice.service`: the candidates tried in order through a
  :class:`~bridge.voice.service.CandidateRunner` (the model router's loop), limits, and
  the words the model and the sender see;
- :mod:`bridge.voice.audio`: container sniffing, durations from headers, ffmpeg;
- :mod:`bridge.voice.notes`: a message's voice notes transcribed once and stored, and
  annotated for the model from the store;
- :mod:`bridge.voice.wiring`: :class:`~bridge.voice.wiring.VoiceService`, what the door,
  the turn and the app call (settings from the live config, transcribeForMentions,
  echoTranscript, replyWithVoice).

The transcripts themselves are kept by :mod:`bridge.store.transcripts`.
"""

from bridge.voice.audio import Ffmpeg, duration_s, find_ffmpeg, is_ogg_opus
from bridge.voice.client import AudioInput, SpeechAudio, speak_once, transcribe_once
from bridge.voice.service import (
    CandidateRunner,
    InOrder,
    ReplyWithVoice,
    Speaker,
    SpeechFailed,
    SpokenReply,
    Transcriber,
    Transcription,
    TranscriptStatus,
    annotated,
    echo_prefix,
    is_transcribable,
    model_text,
    names_the_bot,
    split_for_speech,
    wants_voice,
)

__all__ = [
    "AudioInput", "CandidateRunner", "Ffmpeg", "InOrder", "ReplyWithVoice",
    "Speaker", "SpeechAudio", "SpeechFailed", "SpokenReply", "TranscriptStatus", "Transcriber",
    "Transcription", "duration_s", "echo_prefix", "find_ffmpeg", "is_ogg_opus",
    "is_transcribable", "model_text", "names_the_bot", "speak_once", "split_for_speech",
    "annotated", "transcribe_once", "wants_voice",
]
