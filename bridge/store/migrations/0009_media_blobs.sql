-- The bytes of media files, for several processes on one store (bridge/store/media_blobs.py).
--
-- id is the media store's content id (the sha256 of data, hex); size the length of data.
-- On SQLite this table exists for schema parity only and stays empty: one process owns
-- the data dir, and <dataDir>/media is the media store.
CREATE TABLE media_blobs (
    id              TEXT PRIMARY KEY,
    mime            TEXT,
    size            INTEGER NOT NULL,
    data            BLOB NOT NULL,
    created_at      REAL NOT NULL
);
