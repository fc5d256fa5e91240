"""Messages and turns: the durable queue every chat goes through.

Inbound: ``record_inbound`` (idempotent) -> ``claim_next`` (a batch becomes one turn,
``processing``) -> ``finish_turn`` (the reply is stored and the batch ``answered`` or
``failed`` in one transaction) -> the reply is delivered and ``mark_delivered``.
``recover`` puts back what a crash left half done.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import replace

from bridge.envelope import ChatAddress, ChatKind, Inbound
from bridge.lru import LRU
from bridge.models.base import Attempt, Usage
from bridge.store.db import Database
from bridge.store.records import (
    STOPPED_REASON,
    Claim,
    Direction,
    HistoryTurn,
    HistoryWindow,
    MessageKind,
    MessageStatus,
    OpenWork,
    RecoveryReport,
    SessionRecord,
    StoredMessage,
    TurnRecord,
    attempts_to_json,
    media_to_json,
    message_from_row,
    quoted_to_json,
    session_from_row,
    turn_from_row,
)
from bridge.store.sql import (
    Body,
    Dialects,
    In,
    all_,
    all_body,
    dialect,
    one,
    one_body,
    run,
    run_body,
    val,
)

# Upper bound of messages answered together in one turn.
MAX_BATCH = 50
# kv namespace: a group session's latest title (key: the session key).
CHAT_TITLE_NAMESPACE = "chat.title"


class MessageQueries(Database):
    @property
    def turn_cache(self) -> TurnCache:
        """The answered turns this store has read (see :class:`TurnCache`)."""
        cache = self.__dict__.get("_turn_cache")
        if cache is None:
            cache = self.__dict__["_turn_cache"] = TurnCache()
        return cache

    # -- inbound -------------------------------------------------------------------

    async def record_inbound(
        self,
        inbound: Inbound,
        *,
        status: MessageStatus = MessageStatus.RECEIVED,
        reason: str | None = None,
        reply: str | None = None,
        reply_kind: MessageKind = MessageKind.PAIRING,
        context: bool = False,
    ) -> int | None:
        """Store ``inbound``; return its row id, or ``None`` if it was stored before.

        ``reply`` (e.g. a pairing code for a refused sender) is stored in the same
        transaction as a pending outbound message for the workers to deliver.
        ``context``: an unaddressed group message whose text is kept for the next answer
        in that chat (see :meth:`group_context`).
        """
        now = time.time()
        a = inbound.address
        key = str(inbound.session_key)
        params = (key, a.channel, a.account, a.chat_id, a.chat_kind.value, a.thread_id,
                  inbound.message_id, inbound.sender_id, inbound.sender_name,
                  int(inbound.mentioned), inbound.text, media_to_json(inbound.media),
                  quoted_to_json(inbound.quoted), status.value, reason, inbound.timestamp,
                  now, now, int(context))

        def tx() -> Body[int | None]:
            row_id = yield val(
                "INSERT INTO messages (direction, role, kind, session_key, channel, account,"
                " chat_id, chat_kind, thread_id, platform_message_id, sender_id, sender_name,"
                " mentioned, text, media, quoted, status, reason, platform_timestamp,"
                " created_at, updated_at, context)"
                " VALUES ('in', 'user', 'chat', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,"
                " ?, ?, ?, ?)"
                " ON CONFLICT (channel, account, platform_message_id) WHERE direction = 'in'"
                " DO NOTHING RETURNING id", *params)
            if row_id is None:
                return None
            for ref in inbound.media:
                if ref.media_id:
                    yield run(
                        "INSERT INTO media (media_id, kind, mime, size, width,"
                        " height, first_seen_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
                        " ON CONFLICT DO NOTHING",
                        ref.media_id, ref.kind.value, ref.mime, ref.size, ref.width,
                        ref.height, now)
            if inbound.chat_title and status is not MessageStatus.REFUSED:
                # The group's latest title, for `palaver chats` (a stranger's group's is
                # not kept).
                yield run(
                    "INSERT INTO kv (namespace, key, value, updated_at) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value,"
                    " updated_at = excluded.updated_at WHERE kv.value != excluded.value",
                    CHAT_TITLE_NAMESPACE, key, inbound.chat_title[:200], now)
            if reply is not None:
                yield from insert_outbound(key=key, address=a, text=reply, kind=reply_kind,
                                           session_id=None, turn_id=None, reply_to=None,
                                           now=now)
            if status is MessageStatus.RECEIVED or reply is not None:
                yield from notify_work(key, outbound=reply is not None)
            return row_id

        # Durable: the channel confirms the message to the platform (update offset, read
        # receipt) right after this returns; a power cut must not lose it afterwards.
        return await self.atomically(tx(), durable=True)

    async def prune_refused(self, before: float) -> int:
        """Delete refused and ignored inbound messages stored before ``before`` (unix
        seconds), and the pairing replies sent to strangers by then; return how many."""

        def tx() -> Body[int]:
            inbound = yield run(
                "DELETE FROM messages WHERE direction = 'in' AND status IN ('refused',"
                " 'ignored') AND created_at < ?", before)
            replies = yield run(
                "DELETE FROM messages WHERE direction = 'out' AND kind = 'pairing' AND"
                " status != 'pending' AND turn_id IS NULL AND created_at < ?", before)
            return inbound + replies

        return await self.atomically(tx())

    async def has_inbound(self, channel: str, account: str, message_id: str) -> bool:
        """Whether this platform message was stored already (any status)."""
        return await self.read_with(one_body(
            "SELECT 1 FROM messages WHERE direction = 'in' AND channel = ? AND account = ?"
            " AND platform_message_id = ?", channel, account, message_id)) is not None

    async def message(self, row_id: int) -> StoredMessage | None:
        row = await self.read_with(one_body("SELECT * FROM messages WHERE id = ?", row_id))
        return message_from_row(row) if row else None

    async def inbound_by_platform_id(
        self, channel: str, account: str, message_id: str
    ) -> StoredMessage | None:
        row = await self.read_with(one_body(
            "SELECT * FROM messages WHERE direction = 'in' AND channel = ? AND account = ?"
            " AND platform_message_id = ?", channel, account, message_id))
        return message_from_row(row) if row else None

    async def messages_for(self, session_key: str) -> list[StoredMessage]:
        """Every message of a session key (all sessions), oldest first."""
        rows = await self.read_with(all_body(
            "SELECT * FROM messages WHERE session_key = ? ORDER BY id", session_key))
        return [message_from_row(r) for r in rows]

    # -- the queue -------------------------------------------------------------------

    async def claim_next(
        self,
        session_key: str,
        *,
        is_command: Callable[[str], bool] = lambda _text: False,
        limit: int = MAX_BATCH,
    ) -> Claim | None:
        """Take the next batch of ``received`` messages of one session as a new turn.

        A command is claimed alone; otherwise every message up to the next command
        (at most ``limit``) is answered together.  ``None`` when nothing is waiting.
        """
        now = time.time()
        owner = self.owner

        def tx() -> Body[Claim | None]:
            if owner is not None:  # several processes: only the chat's owner claims
                from bridge.store.coord import owns_session

                yield from owns_session(session_key, owner)  # raises Lost
            rows = [message_from_row(r) for r in (yield all_(_CLAIM_SQL, session_key, limit))]
            if not rows:
                return None
            if is_command(rows[0].text):
                batch, kind = rows[:1], MessageKind.COMMAND
            else:
                batch, kind = [], MessageKind.CHAT
                for msg in rows:
                    if is_command(msg.text):
                        break
                    batch.append(msg)
            session_id = yield from _active_session_id(rows[0], now)
            if owner is None:
                turn_id = yield val(
                    "INSERT INTO turns (session_id, session_key, kind, status, started_at)"
                    " VALUES (?, ?, ?, 'running', ?) RETURNING id",
                    session_id, session_key, kind.value, now)
            else:  # stamped: the finish is fenced by it, the reaper requeues by it
                turn_id = yield val(
                    "INSERT INTO turns (session_id, session_key, kind, status, started_at,"
                    " owner) VALUES (?, ?, ?, 'running', ?, ?) RETURNING id",
                    session_id, session_key, kind.value, now, owner)
            yield run(
                "UPDATE messages SET status = 'processing', kind = ?, turn_id = ?,"
                " session_id = ?, updated_at = ? WHERE id IN ?",
                kind.value, turn_id, session_id, now, In(m.id for m in batch))
            claimed = tuple(
                replace(m, status=MessageStatus.PROCESSING, turn_id=turn_id,
                        session_id=session_id, kind=kind)
                for m in batch)
            return Claim(turn_id=turn_id, session_id=session_id, session_key=session_key,
                         kind=kind, messages=claimed,
                         more=len(batch) < len(rows) or len(rows) >= limit)

        return await self.atomically(tx())

    async def finish_turn(
        self,
        turn_id: int,
        *,
        reply: str,
        answered: bool = True,
        reason: str | None = None,
        reply_kind: MessageKind = MessageKind.CHAT,
        reply_to_message_id: str | None = None,
        model_ref: str | None = None,
        usage: Usage | None = None,
        attempts: tuple[Attempt, ...] = (),
        prompt_tokens_estimate: int | None = None,
        context_window: int | None = None,
        context_ids: Iterable[int] = (),
    ) -> StoredMessage:
        """Store the turn's reply (pending delivery) and close the turn, atomically.

        ``answered=False`` marks the turn and its messages ``failed`` with ``reason``
        (the reply is then the apology).  Returns the stored outbound message.

        ``context_ids``: the group-context rows (:meth:`group_context`) the model saw;
        an answered turn adopts them (they show in its history), and the chat's other
        context texts from before this turn are blanked: they were not used and never
        will be (an answer ends the window).
        """
        now = time.time()
        status = MessageStatus.ANSWERED if answered else MessageStatus.FAILED
        usage = usage or Usage()
        attempts_json = attempts_to_json(attempts)
        adopted = tuple(context_ids)
        owner = self.owner

        def tx() -> Body[StoredMessage]:
            if owner is not None and not (yield from _owns_turn(turn_id, owner)):
                from bridge.store.coord import TurnTakenOver

                raise TurnTakenOver(f"turn {turn_id} was taken over by another process")
            turn = yield one("SELECT session_id, session_key FROM turns WHERE id = ?",
                             turn_id)
            if turn is None:
                raise KeyError(f"no turn {turn_id}")
            first = yield one(
                "SELECT * FROM messages WHERE turn_id = ? AND direction = 'in' ORDER BY id"
                " LIMIT 1", turn_id)
            address = message_from_row(first).address
            out_id = yield from insert_outbound(
                key=turn["session_key"], address=address, text=reply, kind=reply_kind,
                session_id=turn["session_id"], turn_id=turn_id,
                reply_to=reply_to_message_id, now=now, model_ref=model_ref, usage=usage)
            yield run(
                "UPDATE messages SET status = ?, reason = ?, model_ref = ?, updated_at = ?"
                " WHERE turn_id = ? AND direction = 'in'",
                status.value, reason, model_ref, now, turn_id)
            yield run(
                "UPDATE turns SET status = ?, finished_at = ?, model_ref = ?, attempts = ?,"
                " input_tokens = ?, output_tokens = ?, reasoning_tokens = ?,"
                " prompt_tokens_estimate = ?, context_window = ?, reason = ? WHERE id = ?",
                "answered" if answered else "failed", now, model_ref, attempts_json,
                usage.input_tokens, usage.output_tokens, usage.reasoning_tokens,
                prompt_tokens_estimate, context_window, reason, turn_id)
            if answered:
                yield from _close_context_window(turn["session_key"], turn_id, first["id"],
                                                 adopted, now)
            return StoredMessage(
                id=out_id, direction=Direction.OUT, role="assistant", kind=reply_kind,
                session_key=turn["session_key"], session_id=turn["session_id"],
                turn_id=turn_id, address=address, platform_message_id=None, sender_id=None,
                sender_name=None, mentioned=False, text=reply, media=(), quoted=None,
                status=MessageStatus.PENDING, reason=None, model_ref=model_ref,
                reply_to_message_id=reply_to_message_id, delivered=False, created_at=now)

        return await self.atomically(tx())

    async def stop_turn(self, turn_id: int, *, reason: str = STOPPED_REASON) -> int:
        """Close a running turn that ``/stop`` cancelled: the turn and its messages become
        ``failed`` with ``reason`` and no reply is stored (the ``/stop`` has its own), so
        neither a restart nor :meth:`recover` answers them again.  Returns how many
        messages it closed (0 when the turn was not running any more)."""
        now = time.time()

        owner = self.owner

        def tx() -> Body[int]:
            if owner is not None and not (yield from _owns_turn(turn_id, owner)):
                return 0
            if (yield run("UPDATE turns SET status = 'failed', finished_at = ?, reason = ?"
                          " WHERE id = ? AND status = 'running'", now, reason, turn_id)) == 0:
                return 0
            return (yield run(
                "UPDATE messages SET status = 'failed', reason = ?, updated_at = ?"
                " WHERE turn_id = ? AND direction = 'in' AND status = 'processing'",
                reason, now, turn_id))

        return await self.atomically(tx())

    async def record_control(
        self, inbound: Inbound, reply: str, *, reply_to_message_id: str | None = None,
    ) -> tuple[StoredMessage, StoredMessage] | None:
        """Store a command answered at the door (``/stop``) and its reply, atomically.

        The inbound row is ``answered`` (kind ``command``, no turn), so no worker ever
        claims it; the reply is stored pending (kind ``command``) for the outbox.  Returns
        ``(inbound, reply)``, or None when the message was stored before (a redelivered
        ``/stop`` is not answered twice).
        """
        now = time.time()
        a = inbound.address
        key = str(inbound.session_key)

        def tx() -> Body[tuple[StoredMessage, StoredMessage] | None]:
            in_id = yield val(
                "INSERT INTO messages (direction, role, kind, session_key, channel, account,"
                " chat_id, chat_kind, thread_id, platform_message_id, sender_id, sender_name,"
                " mentioned, text, status, platform_timestamp, created_at, updated_at)"
                " VALUES ('in', 'user', 'command', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,"
                " 'answered', ?, ?, ?)"
                " ON CONFLICT (channel, account, platform_message_id) WHERE direction = 'in'"
                " DO NOTHING RETURNING id",
                key, a.channel, a.account, a.chat_id, a.chat_kind.value, a.thread_id,
                inbound.message_id, inbound.sender_id, inbound.sender_name,
                int(inbound.mentioned), inbound.text, inbound.timestamp, now, now)
            if in_id is None:
                return None
            out_id = yield from insert_outbound(
                key=key, address=a, text=reply, kind=MessageKind.COMMAND, session_id=None,
                turn_id=None, reply_to=reply_to_message_id, now=now)
            rows = {r["id"]: message_from_row(r) for r in (yield all_(
                "SELECT * FROM messages WHERE id IN (?, ?)", in_id, out_id))}
            yield from notify_work(key, outbound=True)
            return rows[in_id], rows[out_id]

        return await self.atomically(tx(), durable=True)

    async def group_context(self, session_key: str, *, before_id: int,
                            limit: int) -> list[StoredMessage]:
        """The newest ``limit`` unaddressed messages kept for context in this chat since
        its last answer and before message ``before_id``, oldest first."""
        if limit <= 0:
            return []

        rows = await self.read_with(all_body(
            "SELECT * FROM messages WHERE session_key = ? AND context = 1"
            " AND turn_id IS NULL AND direction = 'in' AND text != '' AND id < ?"
            " AND id > COALESCE((SELECT MAX(m.id) FROM messages m JOIN turns t"
            " ON t.id = m.turn_id WHERE m.session_key = ? AND m.direction = 'in'"
            " AND t.status = 'answered' AND t.kind = 'chat'), 0)"
            " ORDER BY id DESC LIMIT ?", session_key, before_id, session_key, limit))
        return [message_from_row(r) for r in reversed(rows)]

    async def inbound_of_turn(self, turn_id: int) -> list[StoredMessage]:
        """The inbound messages a turn answered (or tried to), oldest first; adopted
        group-context rows are not among them."""
        return [message_from_row(r) for r in await self.read_with(all_body(
            "SELECT * FROM messages WHERE turn_id = ? AND direction = 'in'"
            " AND context = 0 ORDER BY id", turn_id))]

    async def requeue_turn(self, turn_id: int) -> int:
        """Put a running turn's messages back to ``received`` (the turn becomes
        ``interrupted``); returns how many.  For a turn that could not be finished."""
        now = time.time()

        owner = self.owner

        def tx() -> Body[int]:
            if owner is not None and not (yield from _owns_turn(turn_id, owner)):
                return 0
            yield run("UPDATE turns SET status = 'interrupted', finished_at = ? WHERE id = ?"
                      " AND status = 'running'", now, turn_id)
            return (yield run(
                "UPDATE messages SET status = 'received', turn_id = NULL, updated_at = ?"
                " WHERE turn_id = ? AND direction = 'in' AND status = 'processing'",
                now, turn_id))

        return await self.atomically(tx())

    async def undelivered(self, session_key: str) -> list[StoredMessage]:
        """Replies of a session stored but not yet delivered (incl. retries), oldest first."""
        return [message_from_row(r) for r in await self.read_with(all_body(
            "SELECT * FROM messages WHERE session_key = ? AND direction = 'out'"
            " AND status = 'pending' ORDER BY id", session_key))]

    async def mark_delivered(self, message_id: int, platform_ids: Iterable[str]) -> None:
        """The channel sent the reply; remember the platform ids of its chunks."""
        now = time.time()
        ids = ",".join(platform_ids)
        await self.atomically(run_body(
            "UPDATE messages SET status = 'sent', delivered = 1, delivered_at = ?,"
            " reply_platform_ids = ?, updated_at = ? WHERE id = ?",
            now, ids, now, message_id))

    async def mark_send_failed(
        self, message_id: int, reason: str, sent_ids: Iterable[str] = ()
    ) -> None:
        """The reply cannot be delivered (kept ``failed`` with the reason, not retried)."""
        now = time.time()
        ids = ",".join(sent_ids)
        await self.atomically(run_body(
            "UPDATE messages SET status = 'failed', reason = ?, reply_platform_ids = ?,"
            " send_attempts = send_attempts + 1, next_attempt_at = NULL, updated_at = ?"
            " WHERE id = ?", reason[:500], ids, now, message_id))

    async def mark_send_retry(
        self, message_id: int, reason: str, *, next_attempt_at: float,
        sent_ids: Iterable[str] = (),
    ) -> int:
        """A send failed for a passing reason: stays ``pending``; returns the attempts so far."""
        now = time.time()
        ids = ",".join(sent_ids)

        def tx() -> Body[int]:
            yield run(
                "UPDATE messages SET reason = ?, reply_platform_ids = ?,"
                " send_attempts = send_attempts + 1, next_attempt_at = ?, updated_at = ?"
                " WHERE id = ? AND status = 'pending'",
                reason[:500], ids, next_attempt_at, now, message_id)
            attempts = yield val("SELECT send_attempts FROM messages WHERE id = ?",
                                 message_id)
            return int(attempts) if attempts is not None else 0

        return await self.atomically(tx())

    # -- recovery --------------------------------------------------------------------

    async def recover(
        self, channels: Iterable[str] | None = None, *,
        session_keys: Iterable[str] | None = None,
    ) -> RecoveryReport:
        """After a crash: put ``processing`` messages back to ``received``.

        Only the given channels, and of those only ``session_keys`` when given, are
        touched (another process may own the others); ``None`` means all.  Turns left
        ``running`` become ``interrupted``.
        """
        now = time.time()
        where, params = _channel_filter(channels)
        if session_keys is not None:
            keys = tuple(session_keys)
            if not keys:
                return RecoveryReport(requeued=0, interrupted_turns=0, undelivered=0)
            where += " AND session_key IN ?"
            params = (*params, In(keys))

        def tx() -> Body[RecoveryReport]:
            interrupted = yield run(
                "UPDATE turns SET status = 'interrupted', finished_at = ? WHERE status ="
                " 'running' AND id IN (SELECT turn_id FROM messages WHERE status ="
                f" 'processing' {where})", now, *params)
            requeued = yield run(
                "UPDATE messages SET status = 'received', turn_id = NULL, updated_at = ?"
                f" WHERE direction = 'in' AND status = 'processing' {where}", now, *params)
            undelivered = yield val(
                "SELECT COUNT(*) FROM messages WHERE direction = 'out' AND status = 'pending'"
                f" {where}", *params)
            return RecoveryReport(requeued=requeued, interrupted_turns=interrupted,
                                  undelivered=int(undelivered))

        return await self.atomically(tx())

    async def session_keys_with_work(self, channels: Iterable[str] | None = None) -> list[str]:
        """Session keys with messages waiting (received inbound or pending outbound)."""
        return [w.session_key for w in await self.open_work(channels)]

    async def open_work(self, channels: Iterable[str] | None = None) -> list[OpenWork]:
        """Session keys with inbound ``received``/``processing`` or replies ``pending``,
        oldest work first, each with the address of its newest open message."""
        where, params = _channel_filter(channels)

        def read() -> Body[list[OpenWork]]:
            rows = yield all_(
                "SELECT session_key, MIN(id) AS first_id, MAX(id) AS last_id,"
                " COUNT(*) FILTER (WHERE direction = 'in') AS inbound,"
                " COUNT(*) FILTER (WHERE direction = 'out') AS outbound"
                " FROM messages WHERE ((direction = 'in' AND status IN ('received',"
                f" 'processing')) OR (direction = 'out' AND status = 'pending')) {where}"
                " GROUP BY session_key ORDER BY first_id", *params)
            out = []
            for r in rows:
                a = yield one("SELECT channel, account, chat_id, chat_kind, thread_id FROM"
                              " messages WHERE id = ?", r["last_id"])
                address = ChatAddress(a["channel"], a["account"], a["chat_id"],
                                      ChatKind(a["chat_kind"]), a["thread_id"])
                out.append(OpenWork(r["session_key"], address, int(r["inbound"]),
                                    int(r["outbound"])))
            return out

        return await self.read_with(read())

    async def count_by_status(self) -> dict[str, int]:
        """``{"in:received": n, "out:pending": n, ...}`` (for health and metrics)."""
        rows = await self.read_with(all_body(
            "SELECT direction, status, COUNT(*) AS n FROM messages GROUP BY 1, 2"))
        return {f"{r['direction']}:{r['status']}": int(r["n"]) for r in rows}

    # -- history and turns -------------------------------------------------------------

    async def history(
        self, session_id: int, *, after_turn: int | None = None,
        through_turn: int | None = None, token_budget: int | None = None,
        estimate: Callable[[str], int] | None = None,
    ) -> list[HistoryTurn]:
        """The session's answered chat turns in (``after_turn``, ``through_turn``], oldest
        first: all of them, or the newest that fit ``token_budget`` (see ``history_window``)."""
        cache = self.turn_cache
        window = await self.read_with(_history_window(
            session_id, after_turn, through_turn, token_budget, estimate, cache))
        return window.turns

    async def session_with_history(
        self, session_id: int, *, token_budget: int | None = None,
        estimate: Callable[[str], int] | None = None,
    ) -> tuple[SessionRecord, HistoryWindow]:
        """A session and its history after its summary, in one read.

        Turns are read newest first until their estimated tokens exceed ``token_budget``
        (the turn that crosses it is included, so the prompt builder sees it does not
        fit); ``HistoryWindow.left_out`` counts the older ones not read.  ``estimate``
        counts tokens of a text (default: four characters per token).
        """
        cache = self.turn_cache

        def read() -> Body[tuple[SessionRecord, HistoryWindow]]:
            row = yield one("SELECT * FROM sessions WHERE id = ?", session_id)
            if row is None:
                raise KeyError(f"no session {session_id}")
            session = session_from_row(row)
            window = yield from _history_window(session_id, session.summary_through_turn,
                                                None, token_budget, estimate, cache)
            return session, window

        return await self.read_with(read())

    async def turn(self, turn_id: int) -> TurnRecord | None:
        row = await self.read_with(one_body("SELECT * FROM turns WHERE id = ?", turn_id))
        return turn_from_row(row) if row else None

    async def last_turn(self, session_key: str, *, kind: str = "chat") -> TurnRecord | None:
        """The newest finished turn of a session key (for ``/status``)."""
        row = await self.read_with(one_body(
            "SELECT * FROM turns WHERE session_key = ? AND kind = ? AND status IN"
            " ('answered', 'failed') ORDER BY id DESC LIMIT 1", session_key, kind))
        return turn_from_row(row) if row else None


# ------------------------------------------------------------------------------ helpers


_CLAIM_SQL = Dialects(
    sqlite="SELECT * FROM messages WHERE session_key = ? AND direction = 'in'"
           " AND status = 'received' ORDER BY id LIMIT ?",
    # Rows another transaction is claiming are left to it (defence in depth: one worker
    # per chat already keeps two claims of a session apart).
    postgresql="SELECT * FROM messages WHERE session_key = ? AND direction = 'in'"
               " AND status = 'received' ORDER BY id LIMIT ? FOR UPDATE SKIP LOCKED")





def notify_work(session_key: str, *, outbound: bool = False) -> Body[None]:
    """Wake the chat's owner when this transaction commits (PostgreSQL ``pg_notify``, see
    bridge/store/coord.py; nothing on SQLite, whose one process woke itself)."""
    if (yield dialect()) == "postgresql":
        from bridge.store import coord

        yield from coord.notify_work(session_key, outbound=outbound)


def _owns_turn(turn_id: int, owner: str) -> Body[bool]:
    from bridge.store.coord import owns_turn

    return (yield from owns_turn(turn_id, owner))


def insert_outbound(
    *,
    key: str,
    address: ChatAddress,
    text: str,
    kind: MessageKind,
    session_id: int | None,
    turn_id: int | None,
    reply_to: str | None,
    now: float,
    model_ref: str | None = None,
    usage: Usage | None = None,
) -> Body[int]:
    """Store a pending reply inside the caller's transaction; its row id."""
    return (yield val(
        "INSERT INTO messages (direction, role, kind, session_key, session_id, turn_id,"
        " channel, account, chat_id, chat_kind, thread_id, text, status, model_ref,"
        " input_tokens, output_tokens, reply_to_message_id, created_at, updated_at)"
        " VALUES ('out', 'assistant', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?)"
        " RETURNING id",
        kind.value, key, session_id, turn_id, address.channel, address.account,
        address.chat_id, address.chat_kind.value, address.thread_id, text, model_ref,
        usage.input_tokens if usage else None, usage.output_tokens if usage else None,
        reply_to, now, now))


def _close_context_window(key: str, turn_id: int, first_id: int,
                          adopted: tuple[int, ...], now: float) -> Body[None]:
    """An answered turn adopts the context rows it used and blanks the chat's other kept
    texts from before it (at most groupContextMessages texts wait per chat)."""
    if adopted:
        yield run(
            "UPDATE messages SET turn_id = ?, updated_at = ? WHERE id IN ?"
            " AND session_key = ? AND context = 1 AND turn_id IS NULL",
            turn_id, now, In(adopted), key)
    yield run(
        "UPDATE messages SET text = '', context = 0, updated_at = ? WHERE session_key = ?"
        " AND context = 1 AND turn_id IS NULL AND id < ?", now, key, first_id)


def _active_session_id(msg: StoredMessage, now: float) -> Body[int]:
    found = yield val("SELECT id FROM sessions WHERE session_key = ? AND ended_at IS NULL",
                      msg.session_key)
    if found is not None:
        return found
    a = msg.address
    return (yield val(
        "INSERT INTO sessions (session_key, channel, account, chat_id, chat_kind, thread_id,"
        " created_at) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
        msg.session_key, a.channel, a.account, a.chat_id, a.chat_kind.value, a.thread_id,
        now))


def _channel_filter(channels: Iterable[str] | None) -> tuple[str, tuple[object, ...]]:
    if channels is None:
        return "", ()
    names = tuple(channels)
    if not names:
        return "AND FALSE", ()
    return "AND channel IN ?", (In(names),)


# Turn ids read per query while walking a session's history newest first: the first
# page is small (most windows are), later ones bigger (fewer round trips for long ones);
# message rows are read for at most _HISTORY_PAGE turns at a time.
_HISTORY_PAGE = 64
_HISTORY_PAGE_MAX = 1024
_TURN_OVERHEAD_TOKENS = 8
# Answered turns kept in memory (their messages and reply never change once answered),
# and about how many characters of text they may hold in all.
HISTORY_CACHE_TURNS = 4096
HISTORY_CACHE_CHARS = 4_000_000
_ROW_CHARS = 400  # what a cached message costs besides its text (fields, objects)


def _default_estimate(text: str) -> int:
    return len(text) // 4 + 1 if text else 0


def _turn_chars(turn: HistoryTurn) -> int:
    return len(turn.assistant) + sum(
        _ROW_CHARS + len(m.text) + (len(m.quoted.text or "") if m.quoted else 0)
        for m in turn.user)


class TurnCache:
    """Answered turns by id, with their estimated tokens per estimator: an LRU bounded
    by turns and by characters.

    An answered turn is immutable (its inbound rows and its reply are final), so a cached
    one never goes stale; a session's history read then fetches from SQLite only the
    rows of turns it has not seen yet.  Used from the connection's thread only, under
    the store's lock.
    """

    def __init__(self, max_turns: int = HISTORY_CACHE_TURNS,
                 max_chars: int = HISTORY_CACHE_CHARS) -> None:
        self.max_turns = max_turns
        self.max_chars = max_chars
        # turn id -> (the turn, {estimator: its tokens}); sized in characters
        self._turns: LRU[int, tuple[HistoryTurn, dict[Callable[[str], int], int]]] = \
            LRU(max_turns, max_chars)
        self.rows_read = 0  # message rows fetched from SQLite (for tests and benchmarks)

    def __len__(self) -> int:
        return len(self._turns)

    def get(self, turn_id: int) -> HistoryTurn | None:
        """The answered turn ``turn_id``, or None when not cached."""
        entry = self._turns.get(turn_id)
        return None if entry is None else entry[0]

    def put(self, turn: HistoryTurn) -> None:
        """Remember an answered turn (the least recently used go beyond the bounds)."""
        size = _turn_chars(turn)
        if self.max_turns <= 0 or size > self.max_chars // 4:
            return
        self._turns.put(turn.turn_id, (turn, {}), size)

    def cost(self, turn: HistoryTurn, estimate: Callable[[str], int]) -> int:
        """Estimated tokens of ``turn`` (text only; images are the prompt's business)."""
        entry = self._turns.peek(turn.turn_id)
        costs = entry[1] if entry is not None and entry[0] is turn else None
        if costs is not None:
            cost = costs.get(estimate)
            if cost is not None:
                return cost
        cost = _TURN_OVERHEAD_TOKENS + estimate(turn.assistant) + sum(
            estimate(m.text) + (estimate(m.quoted.text) if m.quoted else 0)
            for m in turn.user)
        if costs is not None:
            costs[estimate] = cost
        return cost

    def clear(self) -> None:
        """Forget every turn."""
        self._turns.clear()


def _history_window(session_id: int, after_turn: int | None,
                    through_turn: int | None, token_budget: int | None,
                    estimate: Callable[[str], int] | None,
                    cache: TurnCache | None = None) -> Body[HistoryWindow]:
    """Newest first, a page of turn ids at a time; only the rows of turns not in
    ``cache`` are read, and reading stops at the chunk of turns where the budget is
    crossed."""
    estimate = estimate or _default_estimate
    cache = cache if cache is not None else TurnCache(0)
    after = after_turn or 0
    upper = through_turn if through_turn is not None else -1  # -1: no upper bound
    used = 0
    turns: list[HistoryTurn] = []  # newest first while reading
    full = False
    before: int | None = None
    page_size = _HISTORY_PAGE
    while not full:
        sql = ("SELECT id FROM turns WHERE session_id = ? AND kind = 'chat' AND status ="
               " 'answered' AND id > ? AND (? < 0 OR id <= ?)")
        params: list = [session_id, after, upper, upper]
        if before is not None:
            sql += " AND id < ?"
            params.append(before)
        ids = [r[0] for r in (yield all_(sql + " ORDER BY id DESC LIMIT ?",
                                         *params, page_size))]
        if not ids:
            break
        before = ids[-1]
        # Rows are fetched a chunk of turns at a time, so that a budget crossed early in
        # a big page of ids does not read the rows of turns that cannot fit.
        for at in range(0, len(ids), _HISTORY_PAGE):
            chunk = ids[at:at + _HISTORY_PAGE]
            page: dict[int, HistoryTurn] = {}
            missing: list[int] = []
            for turn_id in chunk:
                hit = cache.get(turn_id)
                if hit is None:
                    missing.append(turn_id)
                else:
                    page[turn_id] = hit
            if missing:
                missing.sort()
                rows = [message_from_row(r) for r in (yield all_(
                    "SELECT * FROM messages WHERE turn_id IN ? ORDER BY turn_id, id",
                    In(missing)))]
                cache.rows_read += len(rows)
                for turn in _history(missing, rows):
                    page[turn.turn_id] = turn
                    cache.put(turn)
            for turn_id in chunk:
                turn = page[turn_id]
                turns.append(turn)
                if token_budget is None:
                    continue
                used += cache.cost(turn, estimate)
                if used > token_budget:
                    full = True
                    break
            if full:
                break
        if len(ids) < page_size:
            break
        page_size = min(page_size * 4, _HISTORY_PAGE_MAX)
    left_out = 0
    if full and turns:
        left_out = int((yield val(
            "SELECT COUNT(*) FROM turns WHERE session_id = ? AND kind = 'chat' AND status ="
            " 'answered' AND id > ? AND id < ?", session_id, after, turns[-1].turn_id)))
    turns.reverse()
    return HistoryWindow(turns, left_out)


def _history(turn_ids: list[int], rows: list[StoredMessage]) -> list[HistoryTurn]:
    users: dict[int, list[StoredMessage]] = {t: [] for t in turn_ids}
    replies: dict[int, str] = {}
    for msg in rows:
        assert msg.turn_id is not None
        if msg.direction is Direction.IN:
            users[msg.turn_id].append(msg)
        else:
            replies[msg.turn_id] = msg.text
    return [HistoryTurn(t, tuple(users[t]), replies.get(t, "")) for t in turn_ids]
