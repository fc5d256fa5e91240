-- PostgreSQL twin of ../0002_settings_kv.sql (same number and name; see docs/design/postgres.md §3).
-- Per-chat settings (e.g. the /model choice) and a small key-value store for channels.

-- Keyed by session key, so a choice outlives /new.
CREATE TABLE chat_settings (
    session_key     TEXT NOT NULL,
    name            TEXT NOT NULL,
    value           TEXT NOT NULL,
    updated_at      DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (session_key, name)
);

-- Whatever a channel wants to remember (identity mappings, offsets): namespace + key.
CREATE TABLE kv (
    namespace       TEXT NOT NULL,
    key             TEXT NOT NULL,
    value           TEXT NOT NULL,
    updated_at      DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (namespace, key)
);
