-- Several Palaver processes on one database (issue 20; bridge/store/coord.py).
--
-- Only PostgreSQL uses these tables: a SQLite store belongs to one process (the data
-- dir's run lock).  They exist here too so that both backends have one schema.

-- A running process: its id is new at every registration; heartbeat_at is the
-- database's clock (never compared with a host's).  lock_key is the session-level
-- advisory lock its control connection holds while it lives.
CREATE TABLE processes (
    id              TEXT PRIMARY KEY,
    lock_key        INTEGER NOT NULL,
    app_name        TEXT NOT NULL,
    started_at      REAL NOT NULL,
    heartbeat_at    REAL NOT NULL,
    info            TEXT NOT NULL DEFAULT '{}'
);
CREATE UNIQUE INDEX processes_lock_key ON processes (lock_key);

-- The one process answering a chat: held while its worker flushes, claims, runs and
-- delivers; given up only when nothing waits.  An owner without a processes row is dead.
CREATE TABLE session_owners (
    session_key     TEXT PRIMARY KEY,
    owner           TEXT NOT NULL,
    since           REAL NOT NULL
);
CREATE INDEX session_owners_by_owner ON session_owners (owner);

-- Leaderships ("telegram/<account>:poll", "whatsapp/<account>"): owner NULL when nobody
-- holds it; epoch grows at every change of owner (a fencing token).
CREATE TABLE leaders (
    name            TEXT PRIMARY KEY,
    owner           TEXT,
    epoch           INTEGER NOT NULL,
    since           REAL NOT NULL
);

-- Which process runs a turn (NULL: one process, nothing to fence).
ALTER TABLE turns ADD COLUMN owner TEXT;
CREATE INDEX turns_running ON turns (owner) WHERE status = 'running';

-- The sweep's question: which chats have work waiting?
CREATE INDEX messages_waiting ON messages (session_key)
    WHERE (direction = 'in' AND status = 'received') OR (direction = 'out' AND status = 'pending');
