-- PostgreSQL twin of ../0007_live_replies.sql (same number and name; see docs/design/postgres.md §3).
-- Live replies (issue 17).
--
-- reply_previews: an edit-mode preview of a turn's answer -- a real Telegram message that
-- becomes the reply's first chunk (edited in place), or, after a crash or /stop, is
-- removed.  Draft previews are never stored: they vanish on their own.
-- platform_id is the message id in the channel's chunk id form ("chat:message").
CREATE TABLE reply_previews (
    turn_id     BIGINT PRIMARY KEY REFERENCES turns (id) ON DELETE CASCADE,
    session_key TEXT NOT NULL,
    channel     TEXT NOT NULL,
    account     TEXT NOT NULL,
    chat_id     TEXT NOT NULL,
    chat_kind   TEXT NOT NULL,
    thread_id   TEXT,
    mode        TEXT NOT NULL,
    platform_id TEXT NOT NULL,
    created_at  DOUBLE PRECISION NOT NULL
);
CREATE INDEX reply_previews_by_channel ON reply_previews (channel, account);

-- Group context: 1 on an unaddressed group message whose text is kept (clipped) to go
-- to the model with the next answer in that chat (groupContextMessages > 0).
ALTER TABLE messages ADD COLUMN context INTEGER NOT NULL DEFAULT 0;
CREATE INDEX messages_context ON messages (session_key, id) WHERE context = 1;
