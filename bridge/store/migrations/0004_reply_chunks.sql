-- Chunk-level delivery: each chunk of a reply is recorded as soon as the platform accepted
-- it, so a crash or a retry resumes at the first chunk not recorded (not the whole reply).
CREATE TABLE reply_chunks (
    message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    chunk_index INTEGER NOT NULL,
    platform_id TEXT NOT NULL,
    sent_at REAL NOT NULL,
    PRIMARY KEY (message_id, chunk_index)
) WITHOUT ROWID;
