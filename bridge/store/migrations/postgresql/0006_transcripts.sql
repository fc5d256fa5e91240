-- PostgreSQL twin of ../0006_transcripts.sql (same number and name; see docs/design/postgres.md §3).
-- Transcripts of voice notes, audio files and video notes (see bridge/store/transcripts.py).
--
-- Keyed by the media store's content id: a note is transcribed once, however many turns of
-- history show it again (and a forwarded copy of the same bytes is not transcribed twice).
-- message_id: the message that brought it first (NULL once that message is gone).
-- status: ok (text may be '' for a note without speech), too_long, failed, no_audio;
-- reason says why there is no text, in words for the model (never a server's message).
CREATE TABLE transcripts (
    media_id        TEXT PRIMARY KEY,
    message_id      BIGINT REFERENCES messages (id) ON DELETE SET NULL,
    status          TEXT NOT NULL CHECK (status IN ('ok', 'too_long', 'failed', 'no_audio')),
    text            TEXT NOT NULL DEFAULT '',
    model_ref       TEXT,
    language        TEXT,
    duration_s      DOUBLE PRECISION,
    reason          TEXT NOT NULL DEFAULT '',
    created_at      DOUBLE PRECISION NOT NULL,
    updated_at      DOUBLE PRECISION NOT NULL
);
CREATE INDEX transcripts_by_message ON transcripts (message_id);
