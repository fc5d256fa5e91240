"""What the console reads and changes in a running Palaver: a facade over the App.

The server never touches the App directly; it takes a :class:`ConsoleBackend` (the real
one is :class:`AppBackend`).  Everything here is read-only except the three actions the
console offers: a config edit (through the edit engine, then a reload), approving and
denying a pairing code (the requester is told through its channel).
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from bridge.config.schema import Config
from bridge.secrets import redact
from bridge.store import Store
from bridge.store.pairing import APPROVED_NOTICE, DENIED_NOTICE
from bridge.store.records import PairingRequest

if TYPE_CHECKING:
    from bridge.app import App
    from bridge.config.watch import LiveConfig
    from bridge.conversation import AcceptEvent
    from bridge.turn import TurnEvent

log = logging.getLogger(__name__)

# The same words as an owner's /approve and /deny (bridge.commands).
ACTIVITY_WINDOW_S = 3600.0


@dataclass(frozen=True, slots=True)
class TurnSeen:
    at: float
    session_key: str
    model_ref: str | None
    answered: bool
    fallback: bool  # answered (or failed) after a first candidate failed or was skipped
    errors: tuple[tuple[str, str, str], ...]  # (model_ref, error_class, message)


class Activity:
    """Turns finished lately (an App observer): turns per minute, fallbacks, last errors."""

    def __init__(self, clock: Any = time.time, keep: int = 500) -> None:
        self._clock = clock
        self._turns: deque[TurnSeen] = deque(maxlen=keep)
        self.version = 0  # bumps on every event (the live page waits for a change)

    def observe(self, event: AcceptEvent | TurnEvent) -> None:
        from bridge.turn import TurnEvent

        if not isinstance(event, TurnEvent) or event.kind != "chat":
            return
        errors = tuple((a.model_ref, a.error_class.value, redact(a.message or ""))
                       for a in event.attempts if a.error_class is not None)
        self._turns.append(TurnSeen(
            self._clock(), event.session_key, event.model_ref, event.answered,
            fallback=len(event.attempts) > 1, errors=errors))
        self.version += 1

    def summary(self) -> dict[str, Any]:
        now = self._clock()
        recent = [t for t in self._turns if t.at > now - ACTIVITY_WINDOW_S]
        last_5 = [t for t in recent if t.at > now - 300]
        errors = [{"at": t.at, "chat": t.session_key, "model": ref, "error": cls,
                   "message": msg}
                  for t in recent for ref, cls, msg in t.errors]
        return {
            "turns_per_min": round(len(last_5) / 5.0, 1),
            "turns_hour": len(recent),
            "failed_hour": sum(1 for t in recent if not t.answered),
            "fallbacks_hour": sum(1 for t in recent if t.fallback),
            "last_errors": errors[-10:][::-1],
        }


class ConsoleBackend(Protocol):
    """What the console server needs from a running Palaver."""

    activity: Activity

    @property
    def config(self) -> Config: ...

    @property
    def config_path(self) -> Path | None: ...

    @property
    def store(self) -> Store: ...

    async def health(self) -> Mapping[str, Any]: ...

    def cluster(self) -> Mapping[str, Any] | None:
        """``/healthz``'s ``cluster`` part (None when not started)."""
        ...

    def router_status(self) -> dict[str, dict[str, Any]]: ...

    async def reload_config(self) -> None: ...

    async def approve_pairing(self, channel: str, code: str) -> PairingOutcome | None: ...

    async def deny_pairing(self, channel: str, code: str) -> PairingOutcome | None: ...


@dataclass(frozen=True, slots=True)
class PairingOutcome:
    request: PairingRequest
    told: bool  # the requester's channel took the notice
    detail: str = ""


class AppBackend:
    """The console's view of an :class:`~bridge.app.App` (started) and its LiveConfig."""

    def __init__(self, app: App, live: LiveConfig | None) -> None:
        self._app = app
        self._live = live
        self.activity = Activity()
        self._subscribed = False

    def attach(self) -> None:
        """Observe the App's turns (once it is started)."""
        if not self._subscribed:
            self._app.core.add_observer(self.activity.observe)
            self._subscribed = True

    @property
    def config(self) -> Config:
        return self._app.config

    @property
    def config_path(self) -> Path | None:
        return self._live.path if self._live is not None else None

    @property
    def store(self) -> Store:
        return self._app.store

    async def health(self) -> Mapping[str, Any]:
        return await self._app.health()

    def cluster(self) -> Mapping[str, Any] | None:
        return self._app.cluster_status()

    def router_status(self) -> dict[str, dict[str, Any]]:
        router = self._app.router
        status = getattr(router, "status", None)
        if status is None:
            return {}
        try:
            return dict(status())
        except Exception:
            log.debug("router status unavailable", exc_info=True)
            return {}

    async def reload_config(self) -> None:
        if self._live is not None:
            await self._live.reload()

    async def approve_pairing(self, channel: str, code: str) -> PairingOutcome | None:
        return await self._decide(channel, code, approve=True)

    async def deny_pairing(self, channel: str, code: str) -> PairingOutcome | None:
        return await self._decide(channel, code, approve=False)

    async def _decide(self, channel: str, code: str, *, approve: bool) -> PairingOutcome | None:
        """Approve or decline a pending code; the requester is told."""
        request = await (self.store.approve_pairing(channel, code) if approve
                         else self.store.deny_pairing(channel, code))
        if request is None:
            return None
        log.info("console: %s pairing of %s on %s", "approved" if approve else "declined",
                 request.sender_id, channel)
        told, detail = await self._tell(request, APPROVED_NOTICE if approve else DENIED_NOTICE)
        return PairingOutcome(request, told, detail)

    async def _tell(self, request: PairingRequest, text: str) -> tuple[bool, str]:
        """Queue ``text`` for the requester's direct chat; the outbox delivers it (in order,
        retried) like the owner's ``/approve`` notice.  True when this process serves
        that chat."""
        address, key = await self.store.requester_chat(request)
        try:
            served = await self._app.core.tell(address, key, text)
        except Exception as exc:
            log.warning("console: could not tell %s on %s: %s", request.sender_id,
                        request.channel, exc)
            return False, redact(f"could not tell them: {exc}")
        if not served:
            return False, (f"the {request.channel} channel is not running here: they will "
                           "be told when it runs.")
        return True, ""


@dataclass(frozen=True, slots=True)
class TurnRow:
    id: int
    session_key: str
    kind: str
    status: str
    started_at: float
    latency_s: float | None
    model_ref: str | None
    attempts: tuple[dict[str, Any], ...]
    input_tokens: int | None
    output_tokens: int | None
    reason: str | None
    user_text: str | None  # only with logging.logMessageText
    reply_text: str | None


async def recent_turns(store: Store, *, limit: int = 50, session_key: str | None = None,
                       with_text: bool = False) -> list[TurnRow]:
    """The newest turns (read-only), their attempts, tokens and latency; message text only
    when ``with_text``."""
    sql = "SELECT * FROM turns"
    params: list[Any] = []
    if session_key:
        sql += " WHERE session_key = ?"
        params.append(session_key)
    sql += " ORDER BY id DESC LIMIT ?"
    params.append(limit)
    async with store.reading() as db:
        cur = await db.execute(sql, params)
        rows = list(await cur.fetchall())
        texts: dict[int, dict[str, str]] = {}
        if with_text and rows:
            ids = [r["id"] for r in rows]
            cur = await db.execute(
                f"SELECT turn_id, direction, text FROM messages WHERE turn_id IN"
                f" ({','.join('?' * len(ids))}) ORDER BY id", ids)
            for m in await cur.fetchall():
                entry = texts.setdefault(m["turn_id"], {})
                key = "in" if m["direction"] == "in" else "out"
                entry[key] = (entry.get(key, "") + "\n" + m["text"]).strip()
    out = []
    for r in rows:
        try:
            attempts = tuple(a for a in json.loads(r["attempts"] or "[]") if isinstance(a, dict))
        except ValueError:
            attempts = ()
        latency = (r["finished_at"] - r["started_at"]) if r["finished_at"] else None
        t = texts.get(r["id"], {})
        out.append(TurnRow(
            r["id"], r["session_key"], r["kind"], r["status"], r["started_at"], latency,
            r["model_ref"], attempts, r["input_tokens"], r["output_tokens"], r["reason"],
            t.get("in") if with_text else None, t.get("out") if with_text else None))
    return out
