-- PostgreSQL twin of ../0009_media_blobs.sql (same number and name; see docs/design/postgres.md §3).
-- The bytes of media files, for several processes on one store (bridge/store/media_blobs.py):
-- a photo received by one Palaver is readable by the one that runs the turn.
--
-- id is the media store's content id (the sha256 of data, hex); size the length of data.
-- Rows never change.  data is stored out of line and uncompressed (STORAGE EXTERNAL):
-- photos and voice notes are compressed already, and substr() then reads only the TOAST
-- chunks it needs, so a reader streams a large file in slices instead of holding it whole.
CREATE TABLE media_blobs (
    id              TEXT PRIMARY KEY,
    mime            TEXT,
    size            BIGINT NOT NULL,
    data            BYTEA NOT NULL,
    created_at      DOUBLE PRECISION NOT NULL
);
ALTER TABLE media_blobs ALTER COLUMN data SET STORAGE EXTERNAL;
