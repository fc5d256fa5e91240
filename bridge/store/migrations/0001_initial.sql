-- Sessions, messages, turns, media and pairing: the conversation store.

-- One conversation of a session key (a direct chat per sender, a group, a topic).
-- /new ends the active one; the next message opens a fresh row for the same key.
CREATE TABLE sessions (
    id              INTEGER PRIMARY KEY,
    session_key     TEXT NOT NULL,
    channel         TEXT NOT NULL,
    account         TEXT NOT NULL,
    chat_id         TEXT NOT NULL,
    chat_kind       TEXT NOT NULL CHECK (chat_kind IN ('direct', 'group')),
    thread_id       TEXT,
    created_at      REAL NOT NULL,
    ended_at        REAL,
    -- Compaction: a model-written summary replaces every turn up to summary_through_turn.
    summary         TEXT,
    summary_through_turn INTEGER
);
CREATE UNIQUE INDEX sessions_active ON sessions (session_key) WHERE ended_at IS NULL;

-- One model call (or command) answering a batch of inbound messages of one session.
CREATE TABLE turns (
    id              INTEGER PRIMARY KEY,
    session_id      INTEGER NOT NULL REFERENCES sessions (id),
    session_key     TEXT NOT NULL,
    kind            TEXT NOT NULL CHECK (kind IN ('chat', 'command')),
    status          TEXT NOT NULL CHECK (status IN ('running', 'answered', 'failed', 'interrupted')),
    started_at      REAL NOT NULL,
    finished_at     REAL,
    model_ref       TEXT,
    -- JSON list of {model_ref, error_class, duration_s, message, skipped}
    attempts        TEXT NOT NULL DEFAULT '[]',
    input_tokens    INTEGER,
    output_tokens   INTEGER,
    reasoning_tokens INTEGER,
    prompt_tokens_estimate INTEGER,
    context_window  INTEGER,
    reason          TEXT
);
CREATE INDEX turns_by_session ON turns (session_id, id);

-- Every message in and out.  Inbound statuses: received -> processing -> answered |
-- failed, or refused / ignored at the door.  Outbound: pending -> sent | failed.
CREATE TABLE messages (
    id              INTEGER PRIMARY KEY,
    direction       TEXT NOT NULL CHECK (direction IN ('in', 'out')),
    role            TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    kind            TEXT NOT NULL DEFAULT 'chat'
                    CHECK (kind IN ('chat', 'command', 'pairing', 'apology')),
    session_key     TEXT NOT NULL,
    session_id      INTEGER REFERENCES sessions (id),
    turn_id         INTEGER REFERENCES turns (id),
    channel         TEXT NOT NULL,
    account         TEXT NOT NULL,
    chat_id         TEXT NOT NULL,
    chat_kind       TEXT NOT NULL CHECK (chat_kind IN ('direct', 'group')),
    thread_id       TEXT,
    platform_message_id TEXT,
    sender_id       TEXT,
    sender_name     TEXT,
    mentioned       INTEGER NOT NULL DEFAULT 0,
    text            TEXT NOT NULL DEFAULT '',
    media           TEXT NOT NULL DEFAULT '[]',
    quoted          TEXT,
    status          TEXT NOT NULL CHECK (status IN ('received', 'processing', 'answered',
                        'failed', 'refused', 'ignored', 'pending', 'sent')),
    reason          TEXT,
    model_ref       TEXT,
    input_tokens    INTEGER,
    output_tokens   INTEGER,
    reply_to_message_id TEXT,
    reply_platform_ids TEXT,
    delivered       INTEGER NOT NULL DEFAULT 0,
    platform_timestamp REAL,
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL,
    delivered_at    REAL
);
-- Idempotent inbound: a redelivered platform message is stored once.
CREATE UNIQUE INDEX messages_inbound_unique
    ON messages (channel, account, platform_message_id) WHERE direction = 'in';
CREATE INDEX messages_queue ON messages (session_key, status, id);
CREATE INDEX messages_by_turn ON messages (turn_id);
CREATE INDEX messages_undelivered ON messages (session_key, id)
    WHERE direction = 'out' AND status = 'pending';

-- Media seen in messages (bytes live in the content-addressed media store).
CREATE TABLE media (
    media_id        TEXT PRIMARY KEY,
    kind            TEXT NOT NULL,
    mime            TEXT,
    size            INTEGER,
    width           INTEGER,
    height          INTEGER,
    first_seen_at   REAL NOT NULL
);

-- Pairing: a code given to an unknown sender, approved by the operator.
CREATE TABLE pairing_requests (
    id              INTEGER PRIMARY KEY,
    channel         TEXT NOT NULL,
    account         TEXT NOT NULL,
    sender_id       TEXT NOT NULL,
    sender_name     TEXT,
    code            TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'approved')),
    created_at      REAL NOT NULL,
    expires_at      REAL NOT NULL,
    approved_at     REAL
);
CREATE INDEX pairing_pending ON pairing_requests (channel, status, expires_at);

CREATE TABLE pairing_approvals (
    channel         TEXT NOT NULL,
    sender_id       TEXT NOT NULL,
    sender_name     TEXT,
    approved_at     REAL NOT NULL,
    code            TEXT,
    PRIMARY KEY (channel, sender_id)
);
