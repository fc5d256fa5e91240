-- Usage and limits: every model call's tokens and cost, and what the limits at the door
-- counted (see bridge/store/usage.py).

-- One model call: a reply or a compaction, attributed to the chat it served.  A failed
-- attempt is here only when its server reported usage (answered = 0).  estimated = 1:
-- the server reported nothing and the counts are Palaver's estimate.
CREATE TABLE usage (
    id              INTEGER PRIMARY KEY,
    at              REAL NOT NULL,
    session_key     TEXT NOT NULL,
    channel         TEXT NOT NULL,
    account         TEXT NOT NULL,
    chat_id         TEXT NOT NULL,
    chat_kind       TEXT NOT NULL CHECK (chat_kind IN ('direct', 'group')),
    thread_id       TEXT,
    sender_id       TEXT,
    turn_id         INTEGER,
    purpose         TEXT NOT NULL CHECK (purpose IN ('reply', 'compaction')),
    model_ref       TEXT NOT NULL,
    provider        TEXT NOT NULL,
    input_tokens    INTEGER NOT NULL DEFAULT 0,
    output_tokens   INTEGER NOT NULL DEFAULT 0,
    reasoning_tokens INTEGER NOT NULL DEFAULT 0,
    cached_tokens   INTEGER NOT NULL DEFAULT 0,
    cache_write_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd        REAL NOT NULL DEFAULT 0,
    estimated       INTEGER NOT NULL DEFAULT 0,
    answered        INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX usage_by_time ON usage (at);
CREATE INDEX usage_by_session ON usage (session_key, at);
CREATE INDEX usage_by_provider ON usage (provider, at);

-- A message the limits let through (counted by messagesPerMinute / messagesPerHour).
-- Unique per platform message: a redelivered message is counted once.
CREATE TABLE limit_admissions (
    id              INTEGER PRIMARY KEY,
    channel         TEXT NOT NULL,
    account         TEXT NOT NULL,
    platform_message_id TEXT NOT NULL,
    session_key     TEXT NOT NULL,
    sender_id       TEXT,
    at              REAL NOT NULL
);
CREATE UNIQUE INDEX limit_admissions_unique
    ON limit_admissions (channel, account, platform_message_id);
CREATE INDEX limit_admissions_by_session ON limit_admissions (session_key, at);
CREATE INDEX limit_admissions_by_sender ON limit_admissions (session_key, sender_id, at);

-- The one notice given for a limit: until it resets, further messages get no reply.
-- scope: 'chat' or 'sender:<id>'.
CREATE TABLE limit_notices (
    session_key     TEXT NOT NULL,
    scope           TEXT NOT NULL,
    kind            TEXT NOT NULL,
    until           REAL NOT NULL,
    noticed_at      REAL NOT NULL,
    PRIMARY KEY (session_key, scope)
);
