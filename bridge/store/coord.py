"""Several Palaver processes on one PostgreSQL store: who is alive, which process answers
which chat, and who holds a platform connection.

Only the database's own mechanisms are used (docs/design/postgres.md §5):

- **Alive.**  A ``processes`` row whose ``heartbeat_at`` (the *database* clock: no host
  clocks compared) is renewed every ``leaseSeconds/3`` on a control connection, which also
  holds a session-level advisory lock.  A process killed outright frees that lock within
  milliseconds (the server sees its connection close); one that stalls stops renewing and
  is dead after ``leaseSeconds``.  A process whose heartbeat is late by 2/3 of the lease
  fences itself (:meth:`PgCoordinator.check_alive` raises :class:`Lost`): others may have
  taken its chats.
- **One worker per chat.**  A ``session_owners`` row, taken by the process that received a
  message (:meth:`~PgCoordinator.acquire`) and given up only by a statement that sees
  nothing waiting (:meth:`~PgCoordinator.release_if_idle`).  Claims and finishes are
  fenced by it: :func:`owns_session` and :func:`owns_turn` run inside the store's claim
  and finish transactions, so a process that lost a chat can neither claim in it nor
  store a reply there (:class:`TurnTakenOver`).
- **Takeover.**  Every live process looks for dead ones every half second and reaps one
  in a single transaction (:func:`reap_body`): it ends the dead process's backends
  (``pg_terminate_backend`` by ``application_name``: a stalled process may hold row locks),
  interrupts its running turns and puts their messages back, and frees its chats and
  leaderships, which it then wakes here.
- **Wake-ups.**  ``NOTIFY palaver_work`` in the transaction that stores work
  (:func:`notify_work`) wakes the chat's owner; a sweep every 2 s finds what a lost
  notification left waiting.  A ``/stop`` received by a process that does not own the
  chat is stored as a waiting message and announced with a ``stop`` payload
  (:func:`notify_stop`): the owner cancels its turn and answers it
  (:func:`answer_stop_body`); its sweep finds a stored ``/stop`` whose notification
  was lost.
- **Leaders.**  ``leaders`` rows (``telegram/<account>:poll``, ``whatsapp/<account>``)
  held by a live process, with an ``epoch`` that grows at every change of owner (a
  fencing token).  :meth:`~Coordinator.lead` registers callbacks that start and stop the
  connection.

A SQLite store belongs to one process (the data dir's run lock): :class:`LocalCoordinator`
says yes to everything and leads everything, so the core calls one API either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bridge.envelope import ChatAddress, ChatKind
from bridge.store.db import StoreError
from bridge.store.sql import Body, Dialects, In, all_, dialect, one, run, val

if TYPE_CHECKING:
    import asyncpg

    from bridge.config.schema import Config
    from bridge.store import Store
    from bridge.store.db import Database
    from bridge.store.records import StoredMessage

log = logging.getLogger(__name__)

WORK_CHANNEL = "palaver_work"
# pg_try_advisory_lock(PROCESS_LOCK_CLASS, processes.lock_key): one lock per process
# (the migration lock is (7218152, 0)).
PROCESS_LOCK_CLASS = 7218153
DB_NOW = "extract(epoch from clock_timestamp())::float8"
REAP_EVERY_S = 0.5
SWEEP_EVERY_S = 2.0
SWEEP_LIMIT = 500
# The reap waits this long for a row lock (its terminated backends let go at once).
REAP_LOCK_TIMEOUT = "2s"
# A heartbeat older than this part of the lease: act on nothing (others may reap us soon).
FENCE_FRACTION = 2 / 3
RECONNECT_EVERY_S = 1.0
# ``palaver run`` keeps a chat this long after its last turn (never more than a third of
# the lease; released by the next reaper round after that, in one statement for all chats
# due): the chat's next message skips the claim's round trips (its acquire is a look in
# memory, and no release ran in between); messages other processes store for it meanwhile
# wake this owner.  Short on purpose: bench_cluster.py at x2 measured p50 accept->send
# ~130 ms with 0.5 s and with none, ~380 ms with 5 s (a chat's every message is then
# answered by one process, whatever process received it).
IDLE_LINGER_S = 0.5


class Lost(StoreError):
    """This process does not own the chat (or leadership) it acted for, or it is not
    sure it is alive: drop the work quietly, another process has it or will."""


class TurnTakenOver(Lost):
    """The turn being finished was taken over (its process was reaped): the reply is not
    stored; the new owner answers the messages again."""


# ------------------------------------------------------------------ reporting (bodies)


def chat_owners() -> Body[dict[str, str]]:
    """Which process holds each chat now (``session_key -> process id``): for the
    console, which shows who answers what."""
    rows = yield all_("SELECT session_key, owner FROM session_owners")
    return {str(r["session_key"]): str(r["owner"]) for r in rows}


# ------------------------------------------------------------------ fences (bodies)


def owns_session(session_key: str, owner: str) -> Body[None]:
    """Inside a claim: ``owner`` holds the chat (the row stays share-locked until the
    claim commits, so a reap or release waits for it), else :class:`Lost`."""
    row = yield one(Dialects(
        sqlite="SELECT 1 FROM session_owners WHERE session_key = ? AND owner = ?",
        postgresql="SELECT 1 FROM session_owners WHERE session_key = ? AND owner = ?"
                   " FOR SHARE"), session_key, owner)
    if row is None:
        raise Lost(f"session {session_key} is not owned by process {owner}")


def owns_turn(turn_id: int, owner: str) -> Body[bool]:
    """Inside a finish (or requeue, stop): is the turn still running under ``owner``?
    The row is locked until commit, so a reaper's interrupt waits and then skips it."""
    row = yield one(Dialects(
        sqlite="SELECT 1 FROM turns WHERE id = ? AND status = 'running' AND owner = ?",
        postgresql="SELECT 1 FROM turns WHERE id = ? AND status = 'running' AND owner = ?"
                   " FOR UPDATE"), turn_id, owner)
    return row is not None


# What a ``palaver_work`` payload asks: ``in`` a message to answer, ``out`` a reply to
# deliver, ``stop`` a ``/stop`` another process stored (cancel the chat's running turn).
PAYLOAD_KINDS = ("in", "out", "stop")


def parse_payload(payload: str) -> tuple[str, str, str] | None:
    """``(session_key, kind, sender)`` from a ``palaver_work`` payload
    (``<kind> <sender's application_name>\n<session key>``, ``kind`` one of
    :data:`PAYLOAD_KINDS`), None when it is not one of ours."""
    head, sep, key = payload.partition("\n")
    kind, _, sender = head.partition(" ")
    if not sep or not key or kind not in PAYLOAD_KINDS:
        return None
    return key, kind, sender


def notify_work(session_key: str, *, outbound: bool = False) -> Body[None]:
    """In a transaction that stores work for a chat: wake its owner at commit (PostgreSQL
    ``pg_notify``; nothing on SQLite, whose one process woke itself).  The payload names
    the sending connection's application_name: a process ignores its own (it woke the
    chat itself, with its debounce)."""
    yield from _notify("out" if outbound else "in", session_key)


def notify_stop(session_key: str) -> Body[None]:
    """A ``/stop`` for the chat was stored as a waiting message by a process that does not
    own it: its owner cancels the running turn and answers the ``/stop``
    (:func:`queued_stops_body`, :func:`answer_stop_body`).  Only a hint: the stored
    ``/stop`` is the request, and the owner's sweep finds it if this is lost."""
    yield from _notify("stop", session_key)


def _notify(kind: str, session_key: str) -> Body[None]:
    if (yield dialect()) == "postgresql":
        yield val("SELECT pg_notify(?, ? || current_setting('application_name') || chr(10)"
                  " || ?)", WORK_CHANNEL, kind + " ", session_key)


# A waiting message that may be a /stop (the caller checks with bridge.commands.is_stop).
_MAYBE_STOP = "lower(text) LIKE '%/stop%'"


def queued_stops_body(session_key: str) -> Body[list[StoredMessage]]:
    """The waiting inbound messages of a chat that may be ``/stop`` s (oldest first): those
    another process stored for this chat's owner."""
    from bridge.store.records import message_from_row

    rows = yield all_(
        "SELECT * FROM messages WHERE session_key = ? AND direction = 'in'"
        f" AND status = 'received' AND {_MAYBE_STOP} ORDER BY id", session_key)
    return [message_from_row(r) for r in rows]


def answer_stop_body(message_id: int, owner: str | None, reply: str, *,
                     reply_to: str | None, now: float) -> Body[bool]:
    """Answer a waiting ``/stop`` (message ``message_id``) outside the queue, as the door
    answers its own (``record_control``): the message becomes an answered command and
    ``reply`` is stored pending for the outbox.  Fenced by the chat's ownership (``owner``;
    None alone on SQLite); False when the message is not waiting any more (a worker
    claimed it, or another answer did)."""
    from bridge.store.messages import insert_outbound
    from bridge.store.records import MessageKind, message_from_row

    row = yield one("SELECT * FROM messages WHERE id = ?", message_id)
    if row is None:
        return False
    msg = message_from_row(row)
    if owner is not None:
        yield from owns_session(msg.session_key, owner)
    taken = yield run(
        "UPDATE messages SET status = 'answered', kind = 'command', updated_at = ?"
        " WHERE id = ? AND direction = 'in' AND status = 'received'", now, message_id)
    if not taken:
        return False
    yield from insert_outbound(key=msg.session_key, address=msg.address, text=reply,
                               kind=MessageKind.COMMAND, session_id=None, turn_id=None,
                               reply_to=reply_to, now=now)
    return True


def acquire_body(session_key: str, owner: str) -> Body[bool]:
    """Take the chat unless a live process holds it (a registered one: its row is
    key-share locked, so a concurrent reap of ``owner`` either waits or wins).

    A chat another live process holds is the common refusal (its messages reach every
    process): it is told without locking that process's row — which its claim and finish
    hold share-locked, and an upsert's ``DO UPDATE`` would wait for — by an insert that
    does nothing on conflict and a plain read.  Only a holder that is gone (or a row gone
    meanwhile) takes the upsert that replaces it."""
    got = yield val(
        "INSERT INTO session_owners (session_key, owner, since)"
        f" SELECT ?, p.id, {DB_NOW} FROM processes p WHERE p.id = ? FOR KEY SHARE"
        " ON CONFLICT (session_key) DO NOTHING RETURNING owner", session_key, owner)
    if got == owner:
        return True
    holder = yield one(
        "SELECT o.owner, EXISTS (SELECT 1 FROM processes q WHERE q.id = o.owner) AS alive"
        " FROM session_owners o WHERE o.session_key = ?", session_key)
    if holder is not None and holder["owner"] == owner:
        return True
    if holder is not None and holder["alive"]:
        return False  # held by a live process: leave it to that one
    got = yield val(
        "INSERT INTO session_owners (session_key, owner, since)"
        f" SELECT ?, p.id, {DB_NOW} FROM processes p WHERE p.id = ? FOR KEY SHARE"
        " ON CONFLICT (session_key) DO UPDATE SET owner = excluded.owner,"
        " since = excluded.since WHERE session_owners.owner = excluded.owner"
        " OR NOT EXISTS (SELECT 1 FROM processes q WHERE q.id = session_owners.owner)"
        " RETURNING owner", session_key, owner)
    return got == owner


# Work that keeps a chat with its owner: a message to answer or being answered, a reply
# to deliver.
_WAITING = ("((direction = 'in' AND status IN ('received', 'processing'))"
            " OR (direction = 'out' AND status = 'pending'))")


def release_many_body(keys: Iterable[str], owner: str) -> Body[set[str]]:
    """:func:`release_body` for several chats in one statement: those given up (nothing
    waits in them); the others stay ``owner``'s."""
    rows = yield all_(
        "DELETE FROM session_owners WHERE owner = ? AND session_key IN ? AND NOT EXISTS"
        " (SELECT 1 FROM messages WHERE messages.session_key = session_owners.session_key"
        f" AND {_WAITING}) RETURNING session_key", owner, In(keys))
    return {r[0] for r in rows}


def release_body(session_key: str, owner: str) -> Body[bool]:
    """Give the chat up in one statement that sees nothing waiting (True), or keep it
    (False).  A message committed before the DELETE keeps it; one committed after finds
    no owner, and its receiver takes the chat (its insert waits for this delete)."""
    gone = yield val(
        "DELETE FROM session_owners WHERE session_key = ? AND owner = ? AND NOT EXISTS"
        f" (SELECT 1 FROM messages WHERE session_key = ? AND {_WAITING}) RETURNING owner",
        session_key, owner, session_key)
    if gone is not None:
        return True
    holder = yield val("SELECT owner FROM session_owners WHERE session_key = ?", session_key)
    return holder != owner  # not (any more) ours: nothing to keep


@dataclass(frozen=True, slots=True)
class Reaped:
    """What reaping one dead process freed."""

    process: str
    sessions: tuple[str, ...]
    leaderships: tuple[str, ...]
    turns: tuple[int, ...]
    requeued: int
    terminated: int


def reap_body(dead: str, *, lease_s: float, lock_free: bool, reaper_app: str,
              now: float) -> Body[Reaped | None]:
    """Reap process ``dead`` if it is still registered and dead: its heartbeat expired,
    or (``lock_free``) the caller holds its advisory lock.  One reaper wins (SKIP
    LOCKED); None when there was nothing (left) to reap."""
    yield run(f"SET LOCAL lock_timeout = '{REAP_LOCK_TIMEOUT}'")
    row = yield one(
        f"SELECT id, app_name FROM processes WHERE id = ? AND (? OR heartbeat_at < {DB_NOW}"
        " - ?) FOR UPDATE SKIP LOCKED", dead, lock_free, lease_s)
    if row is None:
        return None
    terminated = 0
    if row["app_name"] != reaper_app:
        # A stalled process may sit inside a transaction holding row locks: end its
        # backends first (same role only: another role's are left to the server's
        # idle_in_transaction_session_timeout).
        ended = yield all_(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE"
            " application_name = ? AND usename = current_user AND pid <> pg_backend_pid()",
            row["app_name"])
        terminated = sum(1 for r in ended if r[0])
    # Chats first: this waits for a claim of the dead process in flight (it share-locks
    # its owner row), so the turn it inserted is seen by the interrupt below.
    sessions = yield all_("DELETE FROM session_owners WHERE owner = ? RETURNING session_key",
                          dead)
    leads = yield all_(f"UPDATE leaders SET owner = NULL, since = {DB_NOW} WHERE owner = ?"
                       " RETURNING name", dead)
    turns = yield all_("UPDATE turns SET status = 'interrupted', finished_at = ? WHERE"
                       " owner = ? AND status = 'running' RETURNING id", now, dead)
    turn_ids = tuple(int(r[0]) for r in turns)
    requeued = 0
    if turn_ids:
        requeued = yield run(
            "UPDATE messages SET status = 'received', turn_id = NULL, updated_at = ?"
            " WHERE direction = 'in' AND status = 'processing' AND turn_id IN ?",
            now, In(turn_ids))
    yield run("DELETE FROM processes WHERE id = ?", dead)
    return Reaped(dead, tuple(r[0] for r in sessions), tuple(r[0] for r in leads), turn_ids,
                  requeued, terminated)


def orphans_body(now: float) -> Body[int]:
    """Running turns whose process is gone (not a row in ``processes``) go back to the
    queue: a safety net behind the reaper.  Returns the messages requeued."""
    turns = yield all_(
        "UPDATE turns SET status = 'interrupted', finished_at = ? WHERE status = 'running'"
        " AND owner IS NOT NULL AND NOT EXISTS (SELECT 1 FROM processes p WHERE"
        " p.id = turns.owner) RETURNING id", now)
    if not turns:
        return 0
    return (yield run(
        "UPDATE messages SET status = 'received', turn_id = NULL, updated_at = ?"
        " WHERE direction = 'in' AND status = 'processing' AND turn_id IN ?",
        now, In(int(r[0]) for r in turns)))


@dataclass(frozen=True, slots=True)
class Waiting:
    """A chat with work waiting and no live owner but maybe ``owner`` (this process)."""

    session_key: str
    first: int  # the oldest waiting message's id
    inbound: int
    outbound: int
    due: int  # replies not waiting for a retry later
    mine: bool
    stops: int  # waiting messages that may be /stop s (another process stored them)
    address: ChatAddress


def sweep_body(owner: str, now: float, limit: int = SWEEP_LIMIT) -> Body[list[Waiting]]:
    """Chats with messages to answer or replies to deliver that nobody alive owns, or
    that ``owner`` owns (a lost notification), oldest work first.  ``now`` (this host's
    clock, which set ``next_attempt_at`` on this process's replies) tells a reply waiting
    for its retry from one that is due."""
    rows = yield all_(
        "SELECT w.session_key, MIN(w.id) AS first, MAX(w.id) AS last,"
        " COUNT(*) FILTER (WHERE w.direction = 'in') AS inbound,"
        " COUNT(*) FILTER (WHERE w.direction = 'out') AS outbound,"
        " COUNT(*) FILTER (WHERE w.direction = 'out' AND (w.next_attempt_at IS NULL"
        " OR w.next_attempt_at <= ?)) AS due, MAX(o.owner) AS owner,"
        " COUNT(*) FILTER (WHERE w.direction = 'in' AND lower(w.text) LIKE '%/stop%')"
        " AS stops"
        " FROM messages w LEFT JOIN session_owners o ON o.session_key = w.session_key"
        " WHERE ((w.direction = 'in' AND w.status = 'received')"
        " OR (w.direction = 'out' AND w.status = 'pending'))"
        " AND (o.owner IS NULL OR o.owner = ?"
        " OR NOT EXISTS (SELECT 1 FROM processes p WHERE p.id = o.owner))"
        " GROUP BY w.session_key ORDER BY MIN(w.id) LIMIT ?", now, owner, limit)
    if not rows:
        return []
    places = {r["id"]: r for r in (yield all_(
        "SELECT id, channel, account, chat_id, chat_kind, thread_id FROM messages"
        " WHERE id IN ?", In(int(r["last"]) for r in rows)))}
    out = []
    for r in rows:
        a = places[r["last"]]
        out.append(Waiting(r["session_key"], int(r["first"]), int(r["inbound"]),
                           int(r["outbound"]), int(r["due"]), r["owner"] == owner,
                           int(r["stops"]),
                           ChatAddress(a["channel"], a["account"], a["chat_id"],
                                       ChatKind(a["chat_kind"]), a["thread_id"])))
    return out


def gain_body(name: str, owner: str) -> Body[int | None]:
    """Take leadership ``name`` unless a live process holds it; the epoch when ``owner``
    holds it now (grown by one when it changed hands), else None."""
    row = yield one(
        "INSERT INTO leaders (name, owner, epoch, since)"
        f" SELECT ?, p.id, 1, {DB_NOW} FROM processes p WHERE p.id = ? FOR KEY SHARE"
        " ON CONFLICT (name) DO UPDATE SET owner = excluded.owner,"
        " epoch = CASE WHEN leaders.owner = excluded.owner THEN leaders.epoch"
        " ELSE leaders.epoch + 1 END, since = excluded.since"
        " WHERE leaders.owner IS NULL OR leaders.owner = excluded.owner"
        " OR NOT EXISTS (SELECT 1 FROM processes q WHERE q.id = leaders.owner)"
        " RETURNING owner, epoch", name, owner)
    if row is None or row["owner"] != owner:
        return None
    return int(row["epoch"])


def disown_body(keys: Iterable[str], owner: str) -> Body[int]:
    return (yield run("DELETE FROM session_owners WHERE owner = ? AND session_key IN ?",
                      owner, In(keys)))


def resign_body(names: Iterable[str], owner: str) -> Body[int]:
    return (yield run(f"UPDATE leaders SET owner = NULL, since = {DB_NOW} WHERE owner = ?"
                      " AND name IN ?", owner, In(names)))


# ------------------------------------------------------------------ the API


@dataclass(frozen=True, slots=True)
class Wake:
    """Work for a chat: the core wakes its worker (``outbound``: flush its replies too).

    ``address`` is set when the sweep found the chat without a live owner: any process
    serving that address may take it (its worker's :meth:`Coordinator.acquire` decides).
    Without an address the chat is this process's already.  ``stop``: another process
    stored a ``/stop`` for this chat (this process owns it): cancel its running turn and
    answer the waiting ``/stop`` (:func:`answer_stop_body`)."""

    session_key: str
    outbound: bool = False
    address: ChatAddress | None = None
    stop: bool = False


GainCallback = Callable[[int], Awaitable[None]]  # called with the epoch
LoseCallback = Callable[[], Awaitable[None]]


@dataclass(slots=True, eq=False)
class _Lead:
    name: str
    on_gain: GainCallback
    on_lose: LoseCallback
    epoch: int | None = None  # held when set
    revoked: bool = False  # a heartbeat saw another owner (or epoch): lose it
    retry_at: float = 0.0  # monotonic; after an on_gain that failed


class Coordinator:
    """What the core and the app ask about processes, chats and leaders (the common
    part: callbacks and leader bookkeeping)."""

    process_id: str | None = None

    def __init__(self) -> None:
        self._wake_callbacks: list[Callable[[Wake], Any]] = []
        self._lost_callbacks: list[Callable[[], Any]] = []
        self._reaped_callbacks: list[Callable[[Reaped], Any]] = []
        self._leads: dict[str, _Lead] = {}

    # -- lifecycle
    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    # -- chats
    async def acquire(self, session_key: str) -> bool:
        """Own the chat (True), or another live process does (False: leave it to that one;
        the notification of the stored message wakes it)."""
        raise NotImplementedError

    async def release_if_idle(self, session_key: str) -> bool:
        """Give the chat up when nothing waits in it (True); False: work is waiting (or
        being answered), the chat stays this process's."""
        raise NotImplementedError

    def owns(self, session_key: str) -> bool:
        raise NotImplementedError

    async def idle(self, session_key: str) -> bool:
        """The worker has nothing more to do in the chat: give it up when nothing waits
        (True), as :meth:`release_if_idle` — at once, or (a PgCoordinator with
        ``linger_s``) after a while, so that the chat's next message finds it owned here
        (True then: whatever is stored for it meanwhile wakes this process)."""
        return await self.release_if_idle(session_key)

    def forget(self, session_key: str) -> None:
        """A fence said the chat is not this process's (:class:`Lost`): stop assuming it
        is.  If the database still names this process, the sweep wakes the chat and the
        next :meth:`acquire` finds it so."""

    async def disown(self, prefix: str) -> list[str]:
        """Give up the chats whose session keys start with ``prefix`` even with work
        waiting (this process stopped serving them); alone, nothing to give up."""
        return []

    async def request_stop(self, session_key: str) -> None:
        """A ``/stop`` for a chat another process owns was stored (waiting): tell its
        owner now (a hint; its sweep finds the stored ``/stop`` anyway).  Alone: never
        needed (this process owns every chat)."""
        return None

    def check_alive(self) -> None:
        """Raise :class:`Lost` unless this process is registered and sure of its lease."""
        raise NotImplementedError

    def check_owned(self, session_key: str) -> None:
        """Before sending in a chat: :meth:`check_alive` and the chat is this process's."""
        self.check_alive()
        if not self.owns(session_key):
            raise Lost(f"session {session_key} is not this process's any more")

    def on_wake(self, callback: Callable[[Wake], Any]) -> None:
        """Call ``callback(wake)`` (synchronous, must not block) when a chat has work for
        this process: a notification for a chat it owns, or the sweep."""
        self._wake_callbacks.append(callback)

    def on_lost(self, callback: Callable[[], Any]) -> None:
        """Call ``callback()`` when this process was reaped (it stalled past its lease):
        every chat and leadership it held is gone; it registered again under a new id."""
        self._lost_callbacks.append(callback)

    def on_reaped(self, callback: Callable[[Reaped], Any]) -> None:
        """Call ``callback(reaped)`` (synchronous, must not block) when this process reaped
        a dead one, before the chats it freed are woken: e.g. remove what its interrupted
        turns left on the platforms (edit-mode previews)."""
        self._reaped_callbacks.append(callback)

    # -- leaders
    async def lead(self, name: str, on_gain: GainCallback, on_lose: LoseCallback) -> bool:
        """Hold leadership ``name`` whenever possible: ``await on_gain(epoch)`` when this
        process gets it (start the poller, connect), ``await on_lose()`` when it loses it
        (stop, disconnect: before the lease could let another in).  True when held now."""
        raise NotImplementedError

    def holds(self, name: str) -> bool:
        lead = self._leads.get(name)
        return lead is not None and lead.epoch is not None and not lead.revoked

    def epoch(self, name: str) -> int | None:
        lead = self._leads.get(name)
        return lead.epoch if lead is not None and not lead.revoked else None

    def check_leader(self, name: str) -> None:
        """Before acting as leader (a getUpdates): raise :class:`Lost` unless held."""
        self.check_alive()
        if not self.holds(name):
            raise Lost(f"leadership {name} is not this process's")

    @property
    def leaderships(self) -> dict[str, int]:
        """The leaderships held, with their epochs."""
        return {n: lead.epoch for n, lead in self._leads.items()
                if lead.epoch is not None and not lead.revoked}

    def leader_of(self, name: str) -> str | None:
        """The process that holds leadership ``name`` as last seen (this one's id when
        held here; ``None`` when nobody does or it is not known yet)."""
        return self.process_id if self.holds(name) else None

    def status(self) -> dict[str, Any]:
        """For ``/healthz`` (``cluster``) and the console."""
        raise NotImplementedError

    # -- helpers
    def _fire_wake(self, wake: Wake) -> None:
        for callback in self._wake_callbacks:
            try:
                callback(wake)
            except Exception:
                log.exception("wake callback failed for %s", wake.session_key)

    async def _gain(self, lead: _Lead, epoch: int) -> bool:
        lead.epoch, lead.revoked = epoch, False
        log.info("leader of %s (epoch %d) is this process (%s)", lead.name, epoch,
                 self.process_id or "single process")
        try:
            await lead.on_gain(epoch)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("starting %s as its leader failed; giving it up", lead.name)
            lead.epoch = None
            lead.retry_at = time.monotonic() + 5.0
            return False
        return True

    async def _lose(self, lead: _Lead, why: str) -> None:
        if lead.epoch is None:
            return
        lead.epoch, lead.revoked = None, False
        log.warning("no longer leader of %s: %s", lead.name, why)
        try:
            await lead.on_lose()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("stopping %s after losing its leadership failed", lead.name)


class LocalCoordinator(Coordinator):
    """One process on its own store (SQLite): every chat is this process's, it leads
    everything, nothing is ever lost."""

    def __init__(self) -> None:
        super().__init__()
        self._started = False

    async def start(self) -> None:
        self._started = True
        for lead in list(self._leads.values()):
            if lead.epoch is None:
                await self._gain(lead, 1)

    async def stop(self) -> None:
        self._started = False
        for lead in list(self._leads.values()):
            await self._lose(lead, "stopping")

    async def acquire(self, session_key: str) -> bool:
        return True

    async def release_if_idle(self, session_key: str) -> bool:
        return True

    def owns(self, session_key: str) -> bool:
        return True

    def check_alive(self) -> None:
        return None

    async def lead(self, name: str, on_gain: GainCallback, on_lose: LoseCallback) -> bool:
        lead = self._leads[name] = _Lead(name, on_gain, on_lose)
        if self._started:
            return await self._gain(lead, 1)
        return False

    def status(self) -> dict[str, Any]:
        return {"mode": "single", "process": None, "alive": True,
                "leaderships": [{"name": n, "epoch": e} for n, e in self.leaderships.items()]}


def application_name() -> str:
    """A new connection name for one process's backends (``palaver <random>``; short:
    PostgreSQL cuts application_name at 63 bytes).  The pool and the control connection
    use the same, so the reaper can end them all."""
    return f"palaver {secrets.token_hex(6)}"


async def connect(config: Config, *, info: dict[str, Any] | None = None
                  ) -> tuple[Store, Coordinator]:
    """The store ``config`` selects and what coordinates this process on it (neither
    started): on PostgreSQL a :class:`PgCoordinator` with ``store.leaseSeconds``, the
    pool's backends named like its control connection (so a reaper can end them all); on
    SQLite a :class:`LocalCoordinator`."""
    from bridge.store import Store, database_url

    if database_url(config) is None:
        return await Store.connect(config), LocalCoordinator()
    app = application_name()
    store = await Store.connect(config, application_name=app)
    return store, PgCoordinator(store, lease_seconds=config.store.leaseSeconds,
                                app_name=app, info=info, linger_s=IDLE_LINGER_S)


def _new_process_id(app_name: str, generation: int) -> str:
    """``host:pid:tag`` (``.n`` after the n-th registration again): ``tag`` is the one in
    the connections' application_name, so ``pg_stat_activity`` names the process."""
    host = socket.gethostname().split(".")[0][:24] or "host"
    prefix, _, tag = app_name.partition(" ")
    if prefix != "palaver" or not tag:
        tag = secrets.token_hex(6)
    return f"{host}:{os.getpid()}:{tag}" + (f".{generation}" if generation else "")


_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (OSError, TimeoutError,
                                                       ConnectionError)


class PgCoordinator(Coordinator):
    """Coordination of several processes on one PostgreSQL store (see the module).

    ``store`` runs the transactional work (its pool); ``url`` (default: the store's) opens
    the control connection.  ``app_name`` should be the ``application_name`` the store's
    pool was opened with (:func:`application_name`).  ``info`` (host, version, channels)
    is shown to peers and in ``/healthz``.
    """

    def __init__(self, store: Database, *, url: str | None = None,
                 lease_seconds: float = 30.0, app_name: str | None = None,
                 info: dict[str, Any] | None = None, reap_every_s: float = REAP_EVERY_S,
                 sweep_every_s: float = SWEEP_EVERY_S, linger_s: float = 0.0) -> None:
        super().__init__()
        import asyncpg  # noqa: F401  (PostgreSQL only: fail here, not mid-run)

        self.store = store
        self.url = url or getattr(store._driver, "url", None)
        if not self.url:
            raise StoreError("coordination needs a PostgreSQL store")
        self.lease = float(lease_seconds)
        self.app_name = app_name or application_name()
        # lease_s: peers judge this process by its own lease (replicas may differ while
        # a config change rolls out).
        self.info = {"host": socket.gethostname(), "pid": os.getpid(),
                     "lease_s": self.lease, **(info or {})}
        self.reap_every_s = reap_every_s
        self.sweep_every_s = sweep_every_s
        # An idle chat is kept this long (0: given up at once), never past a third of the
        # lease: the fence is the row, and the row is freed with the process anyway.
        self.linger_s = max(0.0, min(float(linger_s), self.lease / 3))
        self._idle_since: dict[str, float] = {}  # owned chats with no work (monotonic)
        self.process_id: str | None = None
        self._lock_key: int | None = None
        self._generation = 0  # registrations so far (a reaped process registers again)
        self._conn: asyncpg.Connection | None = None
        self._conn_lock = asyncio.Lock()
        self._owned: set[str] = set()
        self._last_ok = -math.inf  # monotonic: when the last good heartbeat was sent
        self._tasks: list[asyncio.Task[None]] = []
        self._kick = asyncio.Event()  # leaders: try now
        self._seen: dict[str, int] = {}  # sweep: chat -> oldest waiting id last time
        self._next_sweep = 0.0
        self._peers: list[dict[str, Any]] = []
        self._leader_rows: dict[str, tuple[str | None, int]] = {}
        self._stopping = False
        self.reaped: list[Reaped] = []  # by this process (newest last; for status, tests)

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Register (control connection, advisory lock, processes row, LISTEN) and start
        the heartbeat, the reaper and sweep, and the leaders' loop."""
        self._stopping = False
        self._conn = await self._connect()
        try:
            await self._register()
        except BaseException:
            await self._drop_conn()
            raise
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._every(self.lease / 3, self._beat), name="coord heartbeat"),
            loop.create_task(self._every(self.reap_every_s, self._watch), name="coord reaper"),
            loop.create_task(self._leader_loop(), name="coord leaders"),
        ]

    async def stop(self) -> None:
        """Give everything up cleanly: leaderships (on_lose first), then chats and the
        processes row (the same reap, on itself), then the control connection."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        held = [lead for lead in self._leads.values() if lead.epoch is not None]
        for lead in held:
            await self._lose(lead, "stopping")
        me = self.process_id
        if me is not None:
            try:
                await self.store.atomically(reap_body(me, lease_s=self.lease, lock_free=True,
                                                      reaper_app=self.app_name,
                                                      now=time.time()))
            except Exception as exc:
                log.warning("could not unregister process %s (peers reap it): %s", me, exc)
        self._owned.clear()
        self._idle_since.clear()
        self.process_id = None
        if getattr(self.store, "owner", None) == me:
            setattr(self.store, "owner", None)  # noqa: B010 (Database.owner)
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)

    async def abandon(self) -> None:
        """Die without a word (tests): stop the loops and drop the control connection,
        as a killed process would; peers reap it."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()
        self._last_ok = -math.inf

    async def _connect(self) -> asyncpg.Connection:
        import asyncpg

        conn = await asyncpg.connect(self.url, timeout=10, server_settings={
            "application_name": self.app_name,
            # A dead machine (no FIN) frees the advisory lock in about 11 s.
            "tcp_keepalives_idle": "5", "tcp_keepalives_interval": "2",
            "tcp_keepalives_count": "3",
        })
        # The server cuts long names: compare with what it reports.
        self.app_name = await conn.fetchval("SELECT current_setting('application_name')")
        await conn.add_listener(WORK_CHANNEL, self._notified)
        return conn

    async def _register(self) -> None:
        """A new processes row under a new id, its advisory lock held first (a row seen
        by a reaper always has its lock held, unless its process is dead)."""
        conn = self._conn
        assert conn is not None
        import asyncpg

        for _attempt in range(10):
            key = secrets.randbelow(2**31 - 2) + 1
            async with self._conn_lock:
                if not await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)",
                                           PROCESS_LOCK_CLASS, key):
                    continue
                pid = _new_process_id(self.app_name, self._generation)
                sent = time.monotonic()
                try:
                    await conn.execute(
                        "INSERT INTO processes (id, lock_key, app_name, started_at,"
                        f" heartbeat_at, info) VALUES ($1, $2, $3, {DB_NOW}, {DB_NOW}, $4)",
                        pid, key, self.app_name, json.dumps(self.info))
                except asyncpg.UniqueViolationError:
                    await conn.execute("SELECT pg_advisory_unlock($1, $2)",
                                       PROCESS_LOCK_CLASS, key)
                    continue
            self.process_id, self._lock_key, self._last_ok = pid, key, sent
            self._generation += 1
            setattr(self.store, "owner", pid)  # noqa: B010 (Database.owner)
            log.info("registered as process %s (lease %.0f s)", pid, self.lease)
            return
        raise StoreError("could not register this process (lock keys kept colliding)")

    async def _every(self, interval: float, step: Callable[[], Awaitable[None]]) -> None:
        while not self._stopping:
            await asyncio.sleep(interval)
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("coordination step %s failed", step.__name__)

    # -- liveness ----------------------------------------------------------------

    @property
    def alive(self) -> bool:
        """Registered, and the last good heartbeat is recent enough to act on."""
        return (self.process_id is not None and not self._stopping
                and time.monotonic() - self._last_ok <= self.lease * FENCE_FRACTION)

    def check_alive(self) -> None:
        if self.process_id is None or self._stopping:
            raise Lost("this process is not registered")
        late = time.monotonic() - self._last_ok
        if late > self.lease * FENCE_FRACTION:
            raise Lost(f"no heartbeat for {late:.1f} s (lease {self.lease:.0f} s): another"
                       " process may have taken over")

    async def _beat(self) -> None:
        """Renew the lease; notice being reaped (0 rows), a lost control connection, and
        leaderships that changed hands."""
        if self._conn is None or self._conn.is_closed():
            await self._reconnect()
            return
        if self.process_id is None:  # reaped, and registering again failed
            await self._register()
            return
        sent = time.monotonic()
        try:
            async with self._conn_lock:
                status = await self._conn.execute(
                    f"UPDATE processes SET heartbeat_at = {DB_NOW} WHERE id = $1",
                    self.process_id, timeout=max(1.0, self.lease / 3))
                leaders = await self._conn.fetch("SELECT name, owner, epoch FROM leaders",
                                                 timeout=max(1.0, self.lease / 3))
        except _CONNECTION_ERRORS + _pg_errors() as exc:
            log.warning("heartbeat failed (%s: %s); reconnecting", type(exc).__name__, exc)
            await self._drop_conn()
            return
        if status.rsplit(" ", 1)[-1] == "0":
            await self._was_reaped(unlock=True)
            return
        self._last_ok = sent
        self._leader_rows = {r["name"]: (r["owner"], int(r["epoch"])) for r in leaders}
        for lead in self._leads.values():
            if lead.epoch is None:
                continue
            row = self._leader_rows.get(lead.name)
            if row is None or row[0] != self.process_id or row[1] != lead.epoch:
                lead.revoked = True
        self._kick.set()

    async def _drop_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()

    async def _reconnect(self) -> None:
        """The control connection is gone (its advisory lock with it): connect again;
        keep the registration if the row is still ours, else register anew."""
        try:
            conn = await self._connect()
        except _CONNECTION_ERRORS + _pg_errors() as exc:
            log.warning("control connection: %s", exc)
            return
        self._conn = conn
        if self.process_id is not None and self._lock_key is not None:
            async with self._conn_lock:
                locked = await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)",
                                             PROCESS_LOCK_CLASS, self._lock_key)
                sent = time.monotonic()
                status = "UPDATE 0"
                if locked:
                    status = await conn.execute(
                        f"UPDATE processes SET heartbeat_at = {DB_NOW} WHERE id = $1",
                        self.process_id)
            if locked and status.rsplit(" ", 1)[-1] != "0":
                self._last_ok = sent
                log.info("control connection back; still process %s", self.process_id)
                return
            await self._was_reaped(unlock=bool(locked))
            return
        await self._register()

    async def _was_reaped(self, *, unlock: bool = True) -> None:
        """Another process reaped this one (it stalled or lost its connection): every
        chat and leadership is gone.  Say so, then register again as a new process
        (``unlock``: the control connection still holds the old advisory lock)."""
        old = self.process_id
        if unlock and self._conn is not None and self._lock_key is not None:
            with contextlib.suppress(*_CONNECTION_ERRORS, *_pg_errors()):
                async with self._conn_lock:
                    await self._conn.execute("SELECT pg_advisory_unlock($1, $2)",
                                             PROCESS_LOCK_CLASS, self._lock_key)
        log.warning("process %s was taken over by its peers (stalled past the %.0f s lease"
                    " or lost its database connection); registering again", old, self.lease)
        self._owned.clear()
        self._idle_since.clear()
        self.process_id = None
        setattr(self.store, "owner", None)  # noqa: B010 (Database.owner)
        for lead in self._leads.values():
            await self._lose(lead, "this process was reaped")
        for callback in self._lost_callbacks:
            try:
                callback()
            except Exception:
                log.exception("on_lost callback failed")
        await self._register()
        self._kick.set()

    # -- chats -------------------------------------------------------------------

    async def acquire(self, session_key: str) -> bool:
        if not self.alive:
            return False
        if session_key in self._owned:
            # No round trip: the row is this process's (a reap deletes it only with the
            # processes row, and then _was_reaped empties _owned; a release in flight
            # takes the key out first), and claims and finishes are fenced by it anyway.
            self._idle_since.pop(session_key, None)
            return True
        assert self.process_id is not None
        if await self.store.atomically(acquire_body(session_key, self.process_id)):
            self._owned.add(session_key)
            return True
        return False

    async def release_if_idle(self, session_key: str) -> bool:
        if session_key not in self._owned or self.process_id is None:
            return True
        self._idle_since.pop(session_key, None)
        if await self.store.atomically(release_body(session_key, self.process_id)):
            self._owned.discard(session_key)
            return True
        return False

    async def idle(self, session_key: str) -> bool:
        if self.linger_s <= 0 or session_key not in self._owned:
            return await self.release_if_idle(session_key)
        self._idle_since.setdefault(session_key, time.monotonic())
        return True

    async def release_idle(self, *, now: float | None = None) -> set[str]:
        """Give up the chats idle for ``linger_s`` (one statement); returns those given
        up.  While the statement runs they are not counted as owned (an acquire asks the
        database: it waits for the delete, or finds the row still this process's); a chat
        where work was stored meanwhile stays, and its worker is woken."""
        me = self.process_id
        if me is None or not self._idle_since:
            return set()
        now = time.monotonic() if now is None else now
        due = [k for k, t in self._idle_since.items() if now - t >= self.linger_s]
        if not due:
            return set()
        for key in due:
            del self._idle_since[key]
        due = [k for k in due if k in self._owned]
        self._owned.difference_update(due)
        try:
            gone = await self.store.atomically(release_many_body(due, me))
        except BaseException:
            # Unknown outcome: still ours as far as this process knows (a fence says so
            # if not); tried again at the next round.
            for key in due:
                self._owned.add(key)
                self._idle_since.setdefault(key, now)
            raise
        for key in due:
            if key not in gone and self.process_id == me:
                self._owned.add(key)
                self._fire_wake(Wake(key))
        return gone

    def owns(self, session_key: str) -> bool:
        return session_key in self._owned

    def forget(self, session_key: str) -> None:
        self._owned.discard(session_key)
        self._idle_since.pop(session_key, None)

    async def disown(self, prefix: str) -> list[str]:
        """Give up every chat whose session key starts with ``prefix`` (e.g.
        ``"whatsapp:<account>:"``), work waiting or not: this process stopped serving
        them (it lost the account's leadership), so the new leader must be able to take
        them.  Returns the keys given up."""
        keys = sorted(k for k in self._owned if k.startswith(prefix))
        if keys and self.process_id is not None:
            await self.store.atomically(disown_body(keys, self.process_id))
        self._owned.difference_update(keys)
        for key in keys:
            self._idle_since.pop(key, None)
        return keys

    @property
    def owned(self) -> frozenset[str]:
        return frozenset(self._owned)

    async def request_stop(self, session_key: str) -> None:
        await self.store.atomically(notify_stop(session_key))

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        parsed = parse_payload(payload)
        if parsed is None:
            return
        key, kind, sender = parsed
        if sender == self.app_name:
            return  # stored by this process, which woke the chat itself
        if key in self._owned:  # a chat nobody owns is its receiver's to take
            self._fire_wake(Wake(key, outbound=kind == "out", stop=kind == "stop"))

    # -- reaping and the sweep -----------------------------------------------------

    async def _watch(self) -> None:
        if not self.alive or self._conn is None:
            return
        if self._idle_since:
            await self.release_idle()
        freed = await self.reap_dead()
        now = time.monotonic()
        if freed or now >= self._next_sweep:
            self._next_sweep = now + self.sweep_every_s
            await self.sweep(freed)

    async def reap_dead(self) -> set[str]:
        """Reap every dead peer (returns the chats that freed).  Dead: heartbeat older than
        the lease, or its advisory lock free (its connection is gone)."""
        conn, me = self._conn, self.process_id
        if conn is None or me is None:
            return set()
        async with self._conn_lock:
            rows = await conn.fetch(
                "SELECT id, lock_key, info, age, lease, age > lease AS expired,"
                " pg_try_advisory_lock($3, lock_key::int4) AS free FROM"
                " (SELECT id, lock_key, info, started_at, " + DB_NOW + " - heartbeat_at AS age,"
                " COALESCE((info::json->>'lease_s')::float8, $2) AS lease"
                " FROM processes WHERE id <> $1) AS peers ORDER BY started_at",
                me, self.lease, PROCESS_LOCK_CLASS, timeout=max(1.0, self.lease / 3))
        self._peers = [{"id": r["id"], "heartbeat_age_s": round(float(r["age"]), 2),
                        "info": _json(r["info"])} for r in rows]
        freed: set[str] = set()
        held = [int(r["lock_key"]) for r in rows if r["free"]]
        try:
            for r in rows:
                if not (r["expired"] or r["free"]):
                    continue
                reaped = await self.store.atomically(reap_body(
                    r["id"], lease_s=float(r["lease"]), lock_free=bool(r["free"]),
                    reaper_app=self.app_name, now=time.time()))
                if reaped is None:
                    continue
                self.reaped.append(reaped)
                del self.reaped[:-50]
                self._peers = [p for p in self._peers if p["id"] != reaped.process]
                freed.update(reaped.sessions)
                log.warning(
                    "reaped process %s (%s): %d chat(s) freed, %d turn(s) interrupted with"
                    " %d message(s) back in the queue, leaderships %s, %d backend(s) ended",
                    reaped.process, "connection gone" if r["free"] else "heartbeat expired",
                    len(reaped.sessions), len(reaped.turns), reaped.requeued,
                    list(reaped.leaderships) or "none", reaped.terminated)
                if reaped.leaderships:
                    self._kick.set()
                for callback in self._reaped_callbacks:
                    try:
                        callback(reaped)
                    except Exception:
                        log.exception("on_reaped callback failed")
        finally:
            same = self._conn is conn  # not reconnected meanwhile (the locks died then)
            if held and same and not conn.is_closed():
                async with self._conn_lock:
                    await conn.execute("SELECT pg_advisory_unlock($1, k) FROM"
                                       " unnest($2::int4[]) AS k", PROCESS_LOCK_CLASS, held)
        return freed

    async def sweep(self, freed: Iterable[str] = ()) -> list[Wake]:
        """Wake chats whose work waits with no live owner, or in this process's chats (a
        lost notification).  A chat is woken when its oldest waiting message was already
        waiting at the previous sweep (so a message whose receiver is about to take it,
        or debouncing, is left alone), or at once when a reap just freed it."""
        me = self.process_id
        if me is None:
            return []
        await self.store.atomically(orphans_body(time.time()))
        waiting = await self.store.read_with(sweep_body(me, time.time()))
        freed = set(freed)
        seen, self._seen = self._seen, {w.session_key: w.first for w in waiting}
        wakes = []
        for w in waiting:
            again = seen.get(w.session_key) == w.first
            if w.mine and w.stops:
                # A /stop another process stored for this chat (its notification lost):
                # at once, every sweep until it is answered (answering it twice is a no-op).
                wakes.append(Wake(w.session_key, stop=True))
            if w.mine:
                # Not a reply waiting for its retry: the outbox's timer has that one.
                if (w.inbound or w.due) and again:
                    wakes.append(Wake(w.session_key, w.due > 0, w.address))
            elif again or w.session_key in freed:
                wakes.append(Wake(w.session_key, w.outbound > 0, w.address))
        for wake in wakes:
            self._fire_wake(wake)
        return wakes

    # -- leaders -----------------------------------------------------------------

    async def lead(self, name: str, on_gain: GainCallback, on_lose: LoseCallback) -> bool:
        lead = self._leads[name] = _Lead(name, on_gain, on_lose)
        return await self._try_gain(lead)

    async def _try_gain(self, lead: _Lead) -> bool:
        if not self.alive or time.monotonic() < lead.retry_at:
            return False
        assert self.process_id is not None
        epoch = await self.store.atomically(gain_body(lead.name, self.process_id))
        if epoch is None:
            return False
        if not await self._gain(lead, epoch):
            with contextlib.suppress(Exception):
                await self.store.atomically(resign_body([lead.name], self.process_id))
            return False
        return True

    async def _leader_loop(self) -> None:
        """Lose what was revoked or can no longer be vouched for (a late heartbeat: stop
        before the lease lets another in), take what is free."""
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), timeout=max(0.2, self.lease / 6))
            self._kick.clear()
            try:
                for lead in list(self._leads.values()):
                    if lead.epoch is not None and (lead.revoked or not self.alive):
                        await self._lose(lead, "another process holds it" if lead.revoked
                                         else "no recent heartbeat")
                    elif lead.epoch is None and self.alive:
                        await self._try_gain(lead)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("leadership round failed")

    # -- reporting ---------------------------------------------------------------

    def leader_of(self, name: str) -> str | None:
        if self.holds(name):
            return self.process_id
        row = self._leader_rows.get(name)  # read with every heartbeat
        return row[0] if row is not None else None

    def status(self) -> dict[str, Any]:
        owners: dict[str, list[str]] = {}
        for name, (owner, _epoch) in self._leader_rows.items():
            if owner is not None:
                owners.setdefault(owner, []).append(name)
        return {
            "mode": "cluster",
            "process": self.process_id,
            "alive": self.alive,
            "lease_s": self.lease,
            "heartbeat_age_s": (round(time.monotonic() - self._last_ok, 2)
                                if self._last_ok > -math.inf else None),
            "owned_chats": len(self._owned),
            "idle_chats": len(self._idle_since),
            "leaderships": [{"name": n, "epoch": e} for n, e in self.leaderships.items()],
            "peers": [{**p, "leaderships": sorted(owners.get(p["id"], []))}
                      for p in self._peers],
        }


def _pg_errors() -> tuple[type[BaseException], ...]:
    import asyncpg

    return (asyncpg.PostgresError, asyncpg.InterfaceError)


def _json(text: Any) -> Any:
    try:
        return json.loads(text) if isinstance(text, str) else text
    except ValueError:
        return text


__all__ = [
    "Coordinator", "LocalCoordinator", "Lost", "PgCoordinator", "Reaped", "TurnTakenOver",
    "Wake", "Waiting", "acquire_body", "answer_stop_body", "application_name", "connect",
    "gain_body", "notify_stop", "notify_work", "orphans_body", "owns_session", "owns_turn",
    "parse_payload", "queued_stops_body", "reap_body", "release_body", "release_many_body",
    "sweep_body",
]
