-- PostgreSQL twin of ../0004_reply_chunks.sql (same number and name; see docs/design/postgres.md §3).
-- Chunk-level delivery: each chunk of a reply is recorded as soon as the platform accepted
-- it, so a crash or a retry resumes at the first chunk not recorded (not the whole reply).
CREATE TABLE reply_chunks (
    message_id BIGINT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    chunk_index INTEGER NOT NULL,
    platform_id TEXT NOT NULL,
    sent_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (message_id, chunk_index)
);
