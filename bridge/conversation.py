"""The conversation core: every channel's messages go through here.

``ConversationCore.accept()`` checks access and stores the message before anything else,
then wakes the one worker of its session: messages of one chat are answered in order,
different chats in parallel, and messages that arrive while a turn runs are answered
together in the next turn.  A turn is a command or a model call (prompt, compaction,
router); its reply is stored before it is sent and marked delivered after.  On start,
whatever a crash left half done is picked up again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bridge.access import AccessControl, Verdict
from bridge.commands import (
    CommandContext,
    ModelChoice,
    choose_models,
    is_command,
    parse_command,
    run_command,
)
from bridge.envelope import AcceptStatus, ChatKind, Inbound, Outbound
from bridge.models.base import AllModelsFailed, Attempt, ModelReply, ModelRequest
from bridge.prompt import BuiltPrompt, build_request, compaction_request
from bridge.store import Claim, MessageKind, MessageStatus, Store, StoredMessage
from bridge.store.records import HistoryTurn, RecoveryReport, SessionRecord
from channels.base import SendError

if TYPE_CHECKING:
    from bridge.config.schema import Config, ResolvedModel
    from bridge.media import MediaStore
    from channels.base import Channel

log = logging.getLogger(__name__)

APOLOGY = "The model is unavailable right now — please try again shortly."
INTERNAL_ERROR = "Something went wrong on my side — please try again shortly."


@dataclass(frozen=True, slots=True)
class AcceptEvent:
    """An inbound message reached the door (for metrics)."""

    channel: str
    session_key: str
    status: AcceptStatus
    reason: str = ""
    code: str = ""  # short fixed word for refused/ignored (see AccessDecision.code)


@dataclass(frozen=True, slots=True)
class TurnEvent:
    """A turn finished (for metrics, logs and ``palaver chat``)."""

    session_key: str
    turn_id: int
    kind: str  # "chat" | "command"
    answered: bool
    message_ids: tuple[int, ...]  # store row ids of the inbound messages
    platform_message_ids: tuple[str, ...]
    model_ref: str | None
    attempts: tuple[Attempt, ...]
    duration_s: float
    model_duration_s: float
    delivered: bool
    reason: str | None = None
    compacted: bool = False
    reply: str = ""


Observer = Callable[[AcceptEvent | TurnEvent], Any]


@dataclass(slots=True)
class _TurnState:
    built: dict[str, BuiltPrompt] = field(default_factory=dict)
    compacted: bool = False


class ConversationCore:
    """The :class:`~bridge.envelope.InboundSink` every channel hands messages to.

    ``config`` is a callable returning the live config (read at every turn), or a
    ``Config``.  ``router`` is anything with ``async complete(candidates, request)``.
    """

    def __init__(
        self,
        store: Store,
        config: Callable[[], Config] | Config,
        router: Any,
        *,
        media: MediaStore | None = None,
        channels: Iterable[Channel] = (),
        access: AccessControl | None = None,
    ) -> None:
        self.store = store
        self._config: Callable[[], Config] = config if callable(config) else (lambda: config)
        self.router = router
        self.media = media
        self.access = access or AccessControl(store, self._config)
        self._channels: dict[tuple[str, str], Channel] = {}
        for channel in channels:
            self.attach(channel)
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._dirty: set[str] = set()  # woken while its worker was busy
        self._outbox: set[str] = set()  # may have replies waiting to be delivered
        self._overrides: dict[str, str] = {}
        self._observers: list[Observer] = []
        self._idle = asyncio.Event()
        self._idle.set()
        self._started = False
        self._stopping = False
        self._pending = 0  # inbound messages accepted and not yet answered or failed

    # -- wiring ------------------------------------------------------------------

    def attach(self, channel: Channel) -> None:
        """Let the core send through ``channel`` (keyed by its name and account)."""
        self._channels[(channel.name, channel.account)] = channel

    def detach(self, channel: Channel) -> None:
        self._channels.pop((channel.name, channel.account), None)

    @property
    def channels(self) -> list[Channel]:
        return list(self._channels.values())

    def add_observer(self, observer: Observer) -> None:
        """Call ``observer(event)`` for every AcceptEvent and TurnEvent (must not block)."""
        self._observers.append(observer)

    def set_model_override(self, session_key: str, ref: str | None) -> None:
        """A model for one session outranking its /model choice (not persisted)."""
        if ref is None:
            self._overrides.pop(session_key, None)
        else:
            self._overrides[session_key] = ref

    @property
    def busy_sessions(self) -> int:
        """Sessions with a worker running right now."""
        return len(self._workers)

    def pending_count(self) -> int:
        """Inbound messages accepted and not yet answered or failed (cheap, in memory)."""
        return max(0, self._pending)

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> RecoveryReport:
        """Recover what a crash left (for the attached channels) and resume the queues."""
        names = sorted({name for name, _account in self._channels})
        report = await self.store.recover(names)
        if report.requeued or report.undelivered:
            log.info("recovery: %d message(s) requeued, %d turn(s) interrupted, "
                     "%d reply(ies) to deliver", report.requeued, report.interrupted_turns,
                     report.undelivered)
        counts = await self.store.count_by_status()
        self._pending = counts.get("in:received", 0) + counts.get("in:processing", 0)
        self._started = True
        self._stopping = False
        for key in await self.store.session_keys_with_work(names):
            self._outbox.add(key)
            self._wake(key)
        return report

    async def stop(self, grace: float | None = None) -> None:
        """Stop starting turns; let running ones finish within ``grace`` s, then cancel.

        Messages accepted after this are stored and answered after the next start.
        """
        self._stopping = True
        if grace is None:
            grace = self._config().agents.defaults.shutdownGraceSeconds
        tasks = list(self._workers.values())
        if tasks:
            log.info("waiting up to %.0f s for %d running turn(s)", grace, len(tasks))
            _done, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("%d turn(s) did not finish in %.0f s; they will be answered "
                            "after the next start", len(pending), grace)
                await asyncio.gather(*pending, return_exceptions=True)
        self._started = False

    async def wait_idle(self) -> None:
        """Until no session has work in progress (tests, benchmarks, scripted chat)."""
        while self._workers:
            await self._idle.wait()

    # -- the door ----------------------------------------------------------------

    async def accept(self, inbound: Inbound) -> AcceptStatus:
        """Check access, persist (idempotent), wake the session's worker."""
        key = str(inbound.session_key)
        decision = await self.access.check(inbound)
        code = decision.code
        if decision.allowed and not (inbound.text.strip() or inbound.media or inbound.quoted):
            status, reason, code = MessageStatus.IGNORED, "empty message", "empty"
        elif decision.allowed:
            status, reason = MessageStatus.RECEIVED, None
        elif decision.verdict is Verdict.IGNORE:
            status, reason = MessageStatus.IGNORED, decision.reason
        else:
            status, reason = MessageStatus.REFUSED, decision.reason
        row_id = await self.store.record_inbound(
            inbound, status=status, reason=reason, reply=decision.reply)
        a = inbound.address
        if row_id is None:
            result = AcceptStatus.DUPLICATE
        elif status is MessageStatus.RECEIVED:
            result = AcceptStatus.ACCEPTED
            self._pending += 1
            self._wake(key)
        elif status is MessageStatus.REFUSED:
            result = AcceptStatus.REFUSED
            log.info("refused %s message %s from %s in %s: %s", a.channel,
                     inbound.message_id, inbound.sender_id, a.chat_id, reason)
            if decision.reply is not None:
                self._outbox.add(key)
                self._wake(key)
        else:
            result = AcceptStatus.IGNORED
            log.debug("ignored %s message %s in %s: %s", a.channel, inbound.message_id,
                      a.chat_id, reason)
        self._emit(AcceptEvent(a.channel, key, result, reason or "", code))
        return result

    # -- workers -----------------------------------------------------------------

    def _wake(self, key: str) -> None:
        if not self._started or self._stopping:
            return
        if key in self._workers:
            self._dirty.add(key)
            return
        self._idle.clear()
        task = asyncio.get_running_loop().create_task(self._worker(key), name=f"session {key}")
        self._workers[key] = task

    async def _worker(self, key: str) -> None:
        try:
            while not self._stopping:
                self._dirty.discard(key)
                if key in self._outbox:
                    self._outbox.discard(key)
                    for msg in await self.store.undelivered(key):
                        await self._deliver(msg)
                claim = await self.store.claim_next(key, is_command=is_command)
                if claim is None:
                    if key in self._dirty or key in self._outbox:
                        continue
                    break
                await self._run_claim(claim)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The store itself failed; the messages stay queued for the next start.
            log.exception("session worker %s stopped", key)
        finally:
            if self._workers.get(key) is asyncio.current_task():
                del self._workers[key]
            if not self._workers:
                self._idle.set()

    async def _run_claim(self, claim: Claim) -> None:
        started = time.monotonic()
        try:
            if claim.kind is MessageKind.COMMAND:
                await self._run_command(claim, started)
            else:
                await self._run_chat(claim, started)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("turn %d of %s failed unexpectedly", claim.turn_id, claim.session_key)
            out = await self.store.finish_turn(
                claim.turn_id, reply=INTERNAL_ERROR, answered=False,
                reason=f"internal error: {type(exc).__name__}", reply_kind=MessageKind.APOLOGY,
                reply_to_message_id=_quote_id(claim))
            delivered = await self._deliver(out)
            self._emit(_event(claim, answered=False, started=started, delivered=delivered,
                              reason="internal error", reply=out.text))
        self._pending -= len(claim.messages)

    # -- commands ----------------------------------------------------------------

    async def _run_command(self, claim: Claim, started: float) -> None:
        msg = claim.messages[0]
        parsed = parse_command(msg.text)
        assert parsed is not None
        name, arg = parsed
        ctx = CommandContext(config=self._config(), store=self.store, message=msg,
                             override=self._overrides.get(claim.session_key))
        reply = await run_command(ctx, name, arg)
        out = await self.store.finish_turn(
            claim.turn_id, reply=reply, reply_kind=MessageKind.COMMAND,
            reply_to_message_id=_quote_id(claim))
        delivered = await self._deliver(out)
        log.info("command session=%s turn=%d /%s duration=%.3fs", claim.session_key,
                 claim.turn_id, name, time.monotonic() - started)
        self._emit(_event(claim, answered=True, started=started, delivered=delivered,
                          reply=reply))

    # -- chat turns ----------------------------------------------------------------

    async def _run_chat(self, claim: Claim, started: float) -> None:
        config = self._config()
        last = claim.messages[-1]
        a = last.address
        group = a.chat_kind is ChatKind.GROUP
        choice = await choose_models(config, self.store, last,
                                     override=self._overrides.get(claim.session_key))
        if not choice.candidates:
            await self._fail(claim, started, AllModelsFailed(()), "no model is configured")
            return
        session, history = await self.store.session_with_history(claim.session_id)
        instructions = config.system_prompt_for(
            a.channel, chat_kind=a.chat_kind.value, chat_id=a.chat_id,
            sender_id=last.sender_id, thread_id=a.thread_id)
        compaction = config.agents.defaults.compaction
        state = _TurnState()

        # Proactive compaction: the primary's window cannot hold the whole history.
        if compaction.enabled and history:
            try:
                primary = config.model(choice.candidates[0])
            except KeyError:
                primary = None
            if primary is not None:
                built = await self._build(primary, config, instructions, session, history,
                                          claim, group)
                if built.omitted_turn_ids:
                    keep_from = max(0, len(history) - compaction.keepRecentTurns)
                    through = max(built.omitted_turn_ids[-1], history[keep_from - 1].turn_id
                                  if keep_from > 0 else 0)
                    compacted = await self._compact(config, choice, session, history,
                                                    through, group)
                    if compacted is not None:
                        session, history = compacted
                        state.compacted = True
                    else:
                        state.built[primary.ref] = built
                else:
                    state.built[primary.ref] = built

        model_started = time.monotonic()
        try:
            reply = await self._complete(config, choice, instructions, session, history,
                                         claim, group, state)
        except AllModelsFailed as exc:
            if not (exc.context_overflow and compaction.enabled and history):
                await self._fail(claim, started, exc, None, model_started=model_started)
                return
            log.info("context overflow in %s: compacting and retrying once", claim.session_key)
            compacted = await self._compact(config, choice, session, history,
                                            history[-1].turn_id, group)
            if compacted is None:
                await self._fail(claim, started, exc, None, model_started=model_started)
                return
            session, history = compacted
            state = _TurnState(compacted=True)
            try:
                reply = await self._complete(config, choice, instructions, session, history,
                                             claim, group, state)
            except AllModelsFailed as exc2:
                await self._fail(claim, started, exc2, None, model_started=model_started,
                                 earlier=exc.attempts)
                return
        model_duration = time.monotonic() - model_started
        built = state.built.get(reply.model_ref)
        try:
            model = config.model(reply.model_ref)
            window = model.context_window
        except KeyError:
            window = None
        out = await self.store.finish_turn(
            claim.turn_id, reply=reply.text, model_ref=reply.model_ref, usage=reply.usage,
            attempts=reply.attempts, reply_to_message_id=_quote_id(claim),
            prompt_tokens_estimate=built.prompt_tokens if built else None,
            context_window=window)
        delivered = await self._deliver(out)
        self._log_turn(config, claim, reply.model_ref, reply.attempts, started, model_duration,
                       answered=True, delivered=delivered, reply=reply.text,
                       compacted=state.compacted)
        self._emit(_event(claim, answered=True, started=started, delivered=delivered,
                          model_ref=reply.model_ref, attempts=reply.attempts,
                          model_duration=model_duration, compacted=state.compacted,
                          reply=reply.text))

    async def _build(self, model: ResolvedModel, config: Config, instructions: str | None,
                     session: SessionRecord, history: list[HistoryTurn], claim: Claim,
                     group: bool) -> BuiltPrompt:
        return await build_request(
            model=model, instructions=instructions, summary=session.summary, history=history,
            current=claim.messages, group=group, media_store=self.media,
            settings=config.agents.defaults)

    async def _complete(self, config: Config, choice: ModelChoice, instructions: str | None,
                        session: SessionRecord, history: list[HistoryTurn], claim: Claim,
                        group: bool, state: _TurnState) -> ModelReply:
        async def request_for(model: ResolvedModel) -> ModelRequest:
            built = state.built.get(model.ref)
            if built is None:
                built = await self._build(model, config, instructions, session, history,
                                          claim, group)
                state.built[model.ref] = built
            return built.request

        channel = self._channel_for(claim.messages[-1])
        typing = channel.typing(claim.messages[-1].address) if channel else None
        async with typing or contextlib.nullcontext():
            reply = await self.router.complete(list(choice.candidates), request_for)
        if not reply.text.strip():
            raise AllModelsFailed(reply.attempts)
        return reply

    async def _compact(self, config: Config, choice: ModelChoice, session: SessionRecord,
                       history: list[HistoryTurn], through: int, group: bool
                       ) -> tuple[SessionRecord, list[HistoryTurn]] | None:
        """Summarise turns up to ``through``; store the summary; the new session/history."""
        older = [t for t in history if t.turn_id <= through]
        if not older:
            return None
        compaction = config.agents.defaults.compaction
        candidates = list(choice.candidates)
        if compaction.model:
            try:
                ref = config.resolve_ref(compaction.model)
                candidates = [ref, *[c for c in candidates if c != ref]]
            except KeyError as exc:
                log.warning("compaction.model does not resolve (%s); using the session's", exc)

        def request_for(model: ResolvedModel) -> ModelRequest:
            return compaction_request(model, session.summary, older, group=group)

        started = time.monotonic()
        try:
            reply = await self.router.complete(candidates, request_for)
        except AllModelsFailed as exc:
            log.warning("compaction of %s failed: %s", session.session_key, exc)
            return None
        summary = reply.text.strip()
        if not summary:
            return None
        await self.store.save_summary(session.id, summary, older[-1].turn_id)
        log.info("compacted session=%s turns=%d model=%s duration=%.2fs", session.session_key,
                 len(older), reply.model_ref, time.monotonic() - started)
        new_session = await self.store.session(session.id)
        assert new_session is not None
        return new_session, [t for t in history if t.turn_id > older[-1].turn_id]

    async def _fail(self, claim: Claim, started: float, exc: AllModelsFailed,
                    reason: str | None, *, model_started: float | None = None,
                    earlier: tuple[Attempt, ...] = ()) -> None:
        attempts = (*earlier, *exc.attempts)
        reason = reason or str(AllModelsFailed(attempts))
        out = await self.store.finish_turn(
            claim.turn_id, reply=APOLOGY, answered=False, reason=reason[:1000],
            reply_kind=MessageKind.APOLOGY, attempts=attempts,
            reply_to_message_id=_quote_id(claim))
        delivered = await self._deliver(out)
        model_duration = time.monotonic() - model_started if model_started else 0.0
        self._log_turn(self._config(), claim, None, attempts, started, model_duration,
                       answered=False, delivered=delivered, reason=reason)
        self._emit(_event(claim, answered=False, started=started, delivered=delivered,
                          attempts=attempts, model_duration=model_duration, reason=reason,
                          reply=out.text))

    # -- delivery ------------------------------------------------------------------

    def _channel_for(self, msg: StoredMessage) -> Channel | None:
        return self._channels.get((msg.address.channel, msg.address.account))

    async def _deliver(self, msg: StoredMessage) -> bool:
        """Send a stored reply; mark it delivered, or failed (kept) on SendError."""
        channel = self._channel_for(msg)
        if channel is None:
            log.warning("no %s/%s channel running; reply %d stays queued", msg.address.channel,
                        msg.address.account, msg.id)
            return False
        out = Outbound(msg.address, msg.text, reply_to_message_id=msg.reply_to_message_id,
                       plain=msg.plain)
        try:
            ids = await channel.send(out)
        except asyncio.CancelledError:
            raise
        except SendError as exc:
            log.warning("could not deliver reply %d to %s %s: %s", msg.id, msg.address.channel,
                        msg.address.chat_id, exc)
            await self.store.mark_send_failed(msg.id, str(exc), exc.sent_ids)
            return False
        except Exception as exc:
            log.exception("channel %s failed sending reply %d", msg.address.channel, msg.id)
            await self.store.mark_send_failed(msg.id, f"{type(exc).__name__}: {exc}")
            return False
        await self.store.mark_delivered(msg.id, [str(i) for i in ids])
        return True

    # -- reporting -----------------------------------------------------------------

    def _emit(self, event: AcceptEvent | TurnEvent) -> None:
        for observer in self._observers:
            try:
                observer(event)
            except Exception:
                log.exception("observer %r failed", observer)

    def _log_turn(self, config: Config, claim: Claim, model_ref: str | None,
                  attempts: tuple[Attempt, ...], started: float, model_duration: float, *,
                  answered: bool, delivered: bool, reason: str | None = None,
                  reply: str = "", compacted: bool = False) -> None:
        """One line per turn: session, model that answered, attempts, durations."""
        tried = ",".join(
            f"{at.model_ref}:{'skipped' if at.skipped else (at.error_class or 'ok')}:"
            f"{round(at.duration_s * 1000)}" for at in attempts)
        outcome = "answered" if answered else "failed"
        total = time.monotonic() - started
        fields: dict[str, Any] = {
            "session": claim.session_key, "turn": claim.turn_id, "outcome": outcome,
            "model": model_ref, "attempts": len([at for at in attempts if not at.skipped]),
            "tried": tried, "duration_ms": round(total * 1000, 1),
            "model_ms": round(model_duration * 1000, 1), "batch": len(claim.messages),
            "delivered": delivered,
        }
        if compacted:
            fields["compacted"] = True
        if reason and not answered:
            fields["reason"] = reason[:300]
        if config.logging.logMessageText:
            fields["text_in"] = " | ".join(m.text for m in claim.messages)
            fields["text_out"] = reply
        log.log(logging.INFO if answered else logging.WARNING,
                "turn %s session=%s model=%s attempts=%s duration_ms=%.0f", outcome,
                claim.session_key, model_ref or "-", tried or "-", total * 1000, extra=fields)


def _quote_id(claim: Claim) -> str | None:
    """In groups the reply quotes the (last) triggering message."""
    last = claim.messages[-1]
    if last.address.chat_kind is ChatKind.GROUP:
        return last.platform_message_id
    return None


def _event(claim: Claim, *, answered: bool, started: float, delivered: bool,
           model_ref: str | None = None, attempts: tuple[Attempt, ...] = (),
           model_duration: float = 0.0, reason: str | None = None, compacted: bool = False,
           reply: str = "") -> TurnEvent:
    return TurnEvent(
        session_key=claim.session_key, turn_id=claim.turn_id, kind=claim.kind.value,
        answered=answered, message_ids=tuple(m.id for m in claim.messages),
        platform_message_ids=tuple(m.platform_message_id or "" for m in claim.messages),
        model_ref=model_ref, attempts=attempts, duration_s=time.monotonic() - started,
        model_duration_s=model_duration, delivered=delivered, reason=reason,
        compacted=compacted, reply=reply)
