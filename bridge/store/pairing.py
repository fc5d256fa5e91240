"""Pairing requests (a code given to an unknown sender) and the operator's approvals."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from bridge.envelope import ChatAddress, ChatKind, SessionKey
from bridge.store.db import Database
from bridge.store.records import PairingRequest
from bridge.store.sql import Body, In, all_, all_body, one, one_body, run, run_body, val, val_body

# What the requester is told when an owner decides (in the chat or the web console).
APPROVED_NOTICE = "The operator approved your request: you can talk to me now."
DENIED_NOTICE = "The operator declined your request."


def _request(row) -> PairingRequest:
    return PairingRequest(id=row["id"], channel=row["channel"], account=row["account"],
                          sender_id=row["sender_id"], sender_name=row["sender_name"],
                          code=row["code"], status=row["status"],
                          created_at=row["created_at"], expires_at=row["expires_at"])


def _pending(channel: str, code: str, now: float) -> Body:
    """The pending, unexpired request with ``code`` on ``channel`` (a row), or None."""
    return (yield one(
        "SELECT * FROM pairing_requests WHERE channel = ? AND code = ? AND"
        " status = 'pending' AND expires_at > ?", channel, code.strip().upper(), now))


class PairingQueries(Database):
    async def pairing_code_for(
        self,
        channel: str,
        account: str,
        sender_id: str,
        sender_name: str | None,
        *,
        new_code: Callable[[], str],
        ttl_s: float,
        max_pending: int,
        now: float | None = None,
    ) -> tuple[PairingRequest | None, bool]:
        """The sender's unexpired pending request, or a new one if fewer than
        ``max_pending`` are pending on the channel.

        Returns ``(request, created)``; ``(None, False)`` when the channel is full.
        """
        now = time.time() if now is None else now

        def tx() -> Body[tuple[PairingRequest | None, bool]]:
            row = yield one(
                "SELECT * FROM pairing_requests WHERE channel = ? AND sender_id = ? AND"
                " status = 'pending' AND expires_at > ? ORDER BY id DESC LIMIT 1",
                channel, sender_id, now)
            if row is not None:
                return _request(row), False
            pending = yield val(
                "SELECT COUNT(*) FROM pairing_requests WHERE channel = ? AND status = 'pending'"
                " AND expires_at > ?", channel, now)
            if pending >= max_pending:
                return None, False
            taken = {r["code"] for r in (yield all_(
                "SELECT code FROM pairing_requests WHERE status = 'pending' AND expires_at > ?",
                now))}
            code = new_code()
            while code in taken:
                code = new_code()
            created = yield one(
                "INSERT INTO pairing_requests (channel, account, sender_id, sender_name, code,"
                " status, created_at, expires_at) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?)"
                " RETURNING *", channel, account, sender_id, sender_name, code, now, now + ttl_s)
            return _request(created), True

        return await self.atomically(tx())

    async def pairing_remind(self, request_id: int, *, after_s: float,
                             now: float | None = None) -> bool:
        """Whether to send a pending request's code once more: True (and remembered) the
        first time it is asked ``after_s`` seconds or more after the code was created."""
        now = time.time() if now is None else now

        return await self.atomically(run_body(
            "UPDATE pairing_requests SET reminded_at = ? WHERE id = ? AND status ="
            " 'pending' AND reminded_at IS NULL AND created_at <= ? AND expires_at > ?",
            now, request_id, now - after_s, now)) > 0

    async def pending_pairings(
        self, channel: str | None = None, *, now: float | None = None
    ) -> list[PairingRequest]:
        """Unexpired pending requests, oldest first."""
        now = time.time() if now is None else now
        sql = "SELECT * FROM pairing_requests WHERE status = 'pending' AND expires_at > ?"
        params: tuple = (now,)
        if channel is not None:
            sql += " AND channel = ?"
            params += (channel,)
        return [_request(r) for r in await self.read_with(all_body(sql + " ORDER BY id",
                                                                    *params))]

    async def approve_pairing(
        self, channel: str, code: str, *, now: float | None = None
    ) -> PairingRequest | None:
        """Admit the sender of a pending, unexpired ``code``; ``None`` if there is none."""
        now = time.time() if now is None else now

        def tx() -> Body[PairingRequest | None]:
            row = yield from _pending(channel, code, now)
            if row is None:
                return None
            yield run(
                "UPDATE pairing_requests SET status = 'approved', approved_at = ? WHERE id = ?",
                now, row["id"])
            yield run(
                "INSERT INTO pairing_approvals (channel, sender_id, sender_name, approved_at,"
                " code) VALUES (?, ?, ?, ?, ?) ON CONFLICT (channel, sender_id) DO UPDATE SET"
                " approved_at = excluded.approved_at, code = excluded.code",
                channel, row["sender_id"], row["sender_name"], now, row["code"])
            return _request(row)

        return await self.atomically(tx())

    async def deny_pairing(
        self, channel: str, code: str, *, now: float | None = None
    ) -> PairingRequest | None:
        """Withdraw a pending, unexpired ``code`` (it expires now; the sender may ask again
        later); ``None`` if there is none."""
        now = time.time() if now is None else now

        def tx() -> Body[PairingRequest | None]:
            row = yield from _pending(channel, code, now)
            if row is None:
                return None
            yield run("UPDATE pairing_requests SET expires_at = ? WHERE id = ?", now, row["id"])
            return _request(row)

        return await self.atomically(tx())

    async def requester_chat(self, request: PairingRequest) -> tuple[ChatAddress, str]:
        """Where to tell ``request``'s sender: their direct chat's address (the chat id
        their messages came from: a WhatsApp JID may differ from the sender id) and its
        session key."""
        found = await self.read_with(val_body(
            "SELECT chat_id FROM messages WHERE direction = 'in' AND channel = ? AND"
            " account = ? AND sender_id = ? AND chat_kind = 'direct'"
            " ORDER BY id DESC LIMIT 1", request.channel, request.account, request.sender_id))
        chat_id = str(found) if found is not None else request.sender_id
        address = ChatAddress(request.channel, request.account, chat_id, ChatKind.DIRECT)
        key = SessionKey(request.channel, request.account, f"direct:{request.sender_id}")
        return address, str(key)

    async def is_approved(self, channel: str, sender_ids: Iterable[str]) -> bool:
        """Whether any of these identities of a sender was approved on ``channel``."""
        ids = [s for s in sender_ids if s]
        if not ids:
            return False
        return await self.read_with(one_body(
            "SELECT 1 FROM pairing_approvals WHERE channel = ? AND sender_id IN ? LIMIT 1",
            channel, In(ids))) is not None

    async def approvals(self, channel: str | None = None) -> list[tuple[str, str, str | None]]:
        """``(channel, sender_id, sender_name)`` of every approved sender."""
        sql = "SELECT channel, sender_id, sender_name FROM pairing_approvals"
        params: tuple = ()
        if channel is not None:
            sql += " WHERE channel = ?"
            params = (channel,)
        rows = await self.read_with(all_body(sql + " ORDER BY approved_at", *params))
        return [(r[0], r[1], r[2]) for r in rows]
