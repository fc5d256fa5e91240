"""Rows as typed values, and the JSON forms of envelope parts stored in columns."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from bridge.envelope import ChatAddress, ChatKind, MediaKind, MediaRef, Quoted
from bridge.models.base import Attempt, ErrorClass


class MessageStatus(StrEnum):
    # inbound
    RECEIVED = "received"
    PROCESSING = "processing"
    ANSWERED = "answered"
    FAILED = "failed"  # also outbound: the channel could not deliver it
    REFUSED = "refused"
    IGNORED = "ignored"
    # outbound
    PENDING = "pending"  # stored, not yet delivered
    SENT = "sent"


# The reason on a turn (and its messages) that /stop cancelled: status ``failed``, no reply
# of its own, never answered again (a "cancelled" status would mean rebuilding the
# messages table, see docs/design/live-replies.md section 4.6).
STOPPED_REASON = "stopped"


class Direction(StrEnum):
    IN = "in"  # from a chat
    OUT = "out"  # a reply to one


class MessageKind(StrEnum):
    CHAT = "chat"
    COMMAND = "command"
    PAIRING = "pairing"
    APOLOGY = "apology"


@dataclass(frozen=True, slots=True)
class StoredMessage:
    id: int
    direction: Direction
    role: str  # "user" | "assistant"
    kind: MessageKind
    session_key: str
    session_id: int | None
    turn_id: int | None
    address: ChatAddress
    platform_message_id: str | None
    sender_id: str | None
    sender_name: str | None
    mentioned: bool
    text: str
    media: tuple[MediaRef, ...]
    quoted: Quoted | None
    status: MessageStatus
    reason: str | None
    model_ref: str | None
    reply_to_message_id: str | None
    delivered: bool
    created_at: float
    # Outbound: failed send attempts so far, and when the next retry is due (None: now).
    send_attempts: int = 0
    next_attempt_at: float | None = None
    # Inbound: an unaddressed group message kept as context for the next answer.
    context: bool = False

    @property
    def plain(self) -> bool:
        """Outbound text the channel sends as-is (pairing codes, apologies)."""
        return self.kind in (MessageKind.PAIRING, MessageKind.APOLOGY)


@dataclass(frozen=True, slots=True)
class Claim:
    """A batch of inbound messages of one session, now ``processing`` under one turn."""

    turn_id: int
    session_id: int
    session_key: str
    kind: MessageKind  # CHAT (one or more messages) or COMMAND (exactly one)
    messages: tuple[StoredMessage, ...]
    # True when ``received`` messages of the session may be left behind this claim (a
    # command after the batch, or the batch limit reached): claim again after the turn.
    more: bool = True


@dataclass(frozen=True, slots=True)
class TurnRecord:
    id: int
    session_id: int
    session_key: str
    kind: str
    status: str
    started_at: float
    finished_at: float | None
    model_ref: str | None
    attempts: tuple[Attempt, ...]
    input_tokens: int | None
    output_tokens: int | None
    prompt_tokens_estimate: int | None
    context_window: int | None
    reason: str | None


@dataclass(frozen=True, slots=True)
class HistoryTurn:
    """One answered exchange: the user messages of a turn and the assistant's reply."""

    turn_id: int
    user: tuple[StoredMessage, ...]
    assistant: str


@dataclass(frozen=True, slots=True)
class SessionRecord:
    id: int
    session_key: str
    created_at: float
    ended_at: float | None
    summary: str | None
    summary_through_turn: int | None


@dataclass(frozen=True, slots=True)
class PairingRequest:
    id: int
    channel: str
    account: str
    sender_id: str
    sender_name: str | None
    code: str
    status: str
    created_at: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class OpenWork:
    """A session key with something to do: inbound waiting or replies to deliver."""

    session_key: str
    address: ChatAddress  # of its newest open message (decides which channel owns it)
    inbound: int  # messages received or processing
    outbound: int  # replies pending delivery


@dataclass(frozen=True, slots=True)
class HistoryWindow:
    """The newest answered turns of a session that fit a token budget (oldest first).

    ``left_out`` counts older turns after the summary that were not read: they did not
    fit, so compaction must see them as omitted.
    """

    turns: list[HistoryTurn]
    left_out: int


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    requeued: int  # inbound messages put back from processing to received
    interrupted_turns: int
    undelivered: int  # replies stored but not delivered (sent by the workers)


# --------------------------------------------------------------------------- JSON


def media_to_json(media: tuple[MediaRef, ...] | list[MediaRef]) -> str:
    return json.dumps([_compact(asdict(m)) for m in media], ensure_ascii=False)


def media_from_json(text: str | None) -> tuple[MediaRef, ...]:
    if not text:
        return ()
    out = []
    for item in json.loads(text):
        item["kind"] = MediaKind(item["kind"])
        out.append(MediaRef(**item))
    return tuple(out)


def quoted_to_json(quoted: Quoted | None) -> str | None:
    if quoted is None:
        return None
    data = asdict(quoted)
    data["media"] = [_compact(m) for m in data["media"]]
    return json.dumps(_compact(data), ensure_ascii=False)


def quoted_from_json(text: str | None) -> Quoted | None:
    if not text:
        return None
    data = json.loads(text)
    media = media_from_json(json.dumps(data.pop("media", [])))
    return Quoted(media=media, **data)


def attempts_to_json(attempts: tuple[Attempt, ...] | list[Attempt]) -> str:
    return json.dumps([
        {"model_ref": a.model_ref,
         "error_class": a.error_class.value if a.error_class else None,
         "duration_s": round(a.duration_s, 4), "message": a.message, "skipped": a.skipped}
        for a in attempts
    ], ensure_ascii=False)


def attempts_from_json(text: str | None) -> tuple[Attempt, ...]:
    if not text:
        return ()
    return tuple(
        Attempt(model_ref=a["model_ref"],
                error_class=ErrorClass(a["error_class"]) if a.get("error_class") else None,
                duration_s=float(a.get("duration_s", 0.0)), message=a.get("message", ""),
                skipped=bool(a.get("skipped", False)))
        for a in json.loads(text)
    )


def _compact(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None and v != ()}


# A row of either backend: sqlite3.Row and asyncpg.Record both give row["col"], row[0]
# and .keys().
Row = Any


def message_from_row(row: Row) -> StoredMessage:
    keys = row.keys()  # a list (sqlite3.Row) or a view-like iterator (asyncpg): read twice
    retry = "send_attempts" in keys  # absent before migration 0003
    return StoredMessage(
        id=row["id"],
        direction=Direction(row["direction"]),
        role=row["role"],
        kind=MessageKind(row["kind"]),
        session_key=row["session_key"],
        session_id=row["session_id"],
        turn_id=row["turn_id"],
        address=ChatAddress(row["channel"], row["account"], row["chat_id"],
                            ChatKind(row["chat_kind"]), row["thread_id"]),
        platform_message_id=row["platform_message_id"],
        sender_id=row["sender_id"],
        sender_name=row["sender_name"],
        mentioned=bool(row["mentioned"]),
        text=row["text"],
        media=media_from_json(row["media"]),
        quoted=quoted_from_json(row["quoted"]),
        status=MessageStatus(row["status"]),
        reason=row["reason"],
        model_ref=row["model_ref"],
        reply_to_message_id=row["reply_to_message_id"],
        delivered=bool(row["delivered"]),
        created_at=row["created_at"],
        send_attempts=row["send_attempts"] if retry else 0,
        next_attempt_at=row["next_attempt_at"] if retry else None,
        context=bool(row["context"]) if "context" in keys else False,
    )


def turn_from_row(row: Row) -> TurnRecord:
    return TurnRecord(
        id=row["id"], session_id=row["session_id"], session_key=row["session_key"],
        kind=row["kind"], status=row["status"], started_at=row["started_at"],
        finished_at=row["finished_at"], model_ref=row["model_ref"],
        attempts=attempts_from_json(row["attempts"]), input_tokens=row["input_tokens"],
        output_tokens=row["output_tokens"],
        prompt_tokens_estimate=row["prompt_tokens_estimate"],
        context_window=row["context_window"], reason=row["reason"],
    )


def session_from_row(row: Row) -> SessionRecord:
    return SessionRecord(id=row["id"], session_key=row["session_key"],
                         created_at=row["created_at"], ended_at=row["ended_at"],
                         summary=row["summary"],
                         summary_through_turn=row["summary_through_turn"])
