"""The conversation core: every channel's messages go through here.

``ConversationCore.accept()`` checks access and stores the message before anything else,
then wakes the one worker of its session: messages of one chat are answered in order,
different chats in parallel, and messages that arrive while a turn runs are answered
together in the next turn.  A turn is a command or a model call (prompt, compaction,
router); at most ``agents.defaults.maxConcurrentTurns`` model turns run at once.  A reply
is stored before it is sent and marked delivered after; a send that fails for a passing
reason (``SendError(retryable=True)``) is tried again with backoff, in order, and at once
when the channel reports it is ready again (``channel_ready``).  On start, whatever a
crash left half done is picked up again — for the sessions the attached channels own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
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
from bridge.envelope import AcceptStatus, ChatAddress, ChatKind, Inbound, Outbound
from bridge.models.base import AllModelsFailed, Attempt, ModelReply, ModelRequest
from bridge.ports import InboundSink, SendError
from bridge.prompt import (
    BuiltPrompt,
    PromptCache,
    build_request,
    compaction_request,
    estimate_tokens,
    plan_compaction,
    prompt_budget,
    summary_token_cap,
    truncate_to_tokens,
)
from bridge.store import Claim, MessageKind, MessageStatus, Store, StoredMessage
from bridge.store.records import HistoryTurn, RecoveryReport, SessionRecord

if TYPE_CHECKING:
    from bridge.config.schema import Config, ResolvedModel
    from bridge.media import MediaStore
    from bridge.ports import Channel

log = logging.getLogger(__name__)

APOLOGY = "The model is unavailable right now — please try again shortly."
INTERNAL_ERROR = "Something went wrong on my side — please try again shortly."

# Waits before the 2nd, 3rd ... attempt to send a reply after a retryable SendError; after
# the last one fails (about an hour in all) the reply is marked failed.
SEND_RETRY_DELAYS: tuple[float, ...] = (5, 15, 60, 300, 600, 900, 900, 900)
# A session worker stopped by a store error is started again after this long.
WORKER_RESTART_S = 5.0

_SENT, _RETRY, _FAILED, _NO_CHANNEL = "sent", "retry", "failed", "no channel"


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


@dataclass(slots=True)
class _Progress:
    finished: bool = False  # finish_turn stored the reply (the claim is closed)
    requeued: bool = False  # the claim went back to the queue; pause the worker


class ConversationCore(InboundSink):
    """The :class:`~bridge.envelope.InboundSink` every channel hands messages to.

    ``config`` is a callable returning the live config (read at every turn), or a
    ``Config``.  ``router`` is anything with ``async complete(candidates, request)``.
    ``send_retry_delays`` and ``worker_restart_s`` are for tests.
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
        send_retry_delays: Sequence[float] = SEND_RETRY_DELAYS,
        worker_restart_s: float = WORKER_RESTART_S,
    ) -> None:
        self.store = store
        self._config: Callable[[], Config] = config if callable(config) else (lambda: config)
        self.router = router
        self.media = media
        self.access = access or AccessControl(store, self._config)
        self._channels: dict[tuple[str, str], Channel] = {}
        for channel in channels:
            self.attach(channel)
        self._retry_delays = tuple(send_retry_delays)
        self._worker_restart_s = worker_restart_s
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._dirty: set[str] = set()  # woken while its worker was busy
        self._outbox: set[str] = set()  # may have replies waiting to be delivered
        self._held: set[str] = set()  # a reply waits for a retry: later ones queue behind
        self._timers: dict[str, asyncio.TimerHandle] = {}  # retry / worker restart
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._slots: asyncio.Semaphore | None = None
        self._slots_limit = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._overrides: dict[str, str] = {}
        self._observers: list[Observer] = []
        self._idle = asyncio.Event()
        self._idle.set()
        self._started = False
        self._stopping = False
        self._pending = 0  # inbound messages accepted and not yet answered or failed
        # History turns rendered for prompts (those that cannot change), reused turn
        # after turn; the store keeps the turns it read (Store.turn_cache).
        self.prompt_cache = PromptCache()

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

    def _owner(self, address: ChatAddress) -> Channel | None:
        """The attached channel serving ``address`` (``None``: not this process's chat)."""
        channel = self._channels.get((address.channel, address.account))
        if channel is None or not channel.owns(address):
            return None
        return channel

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> RecoveryReport:
        """Recover what a crash left and resume the queues — only for the sessions the
        attached channels own (another process may serve the others)."""
        self._loop = asyncio.get_running_loop()
        names = sorted({name for name, _account in self._channels})
        work = [w for w in await self.store.open_work(names) if self._owner(w.address)]
        report = await self.store.recover(names, session_keys=[w.session_key for w in work])
        if report.requeued or report.undelivered:
            log.info("recovery: %d message(s) requeued, %d turn(s) interrupted, "
                     "%d reply(ies) to deliver", report.requeued, report.interrupted_turns,
                     report.undelivered)
        self._pending = sum(w.inbound for w in work)
        self._started = True
        self._stopping = False
        for w in work:
            if w.outbound:
                self._outbox.add(w.session_key)
            self._wake(w.session_key)
        return report

    async def stop(self, grace: float | None = None) -> None:
        """Stop starting turns; let running ones finish within ``grace`` s, then cancel.

        Messages accepted after this are stored and answered after the next start;
        replies waiting for a retry are tried again then.
        """
        self._stopping = True
        if grace is None:
            grace = self._config().agents.defaults.shutdownGraceSeconds
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        side = list(self._side_tasks)
        for task in side:
            task.cancel()
        if side:
            await asyncio.gather(*side, return_exceptions=True)
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
        self._held.clear()
        self._started = False

    async def wait_idle(self) -> None:
        """Until no session has work in progress (tests, benchmarks, scripted chat).

        Replies waiting for a retry later do not count as work in progress.
        """
        while self._workers:
            await self._idle.wait()

    def channel_ready(self, channel: Channel) -> None:
        """``channel`` is connected (again): send its queued replies now.

        Channels call this (if their sink has it) whenever they (re)connect; safe to call
        from any thread, before ``start()`` (a no-op then) or repeatedly.
        """
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._resume_channel_soon(channel)
        else:
            loop.call_soon_threadsafe(self._resume_channel_soon, channel)

    def _resume_channel_soon(self, channel: Channel) -> None:
        if not self._started or self._stopping or self._loop is None:
            return
        task = self._loop.create_task(self._resume_channel(channel),
                                      name=f"resume {channel.name}")
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    async def _resume_channel(self, channel: Channel) -> None:
        try:
            work = await self.store.open_work([channel.name])
        except Exception:
            log.exception("could not look up queued replies of %s", channel.name)
            return
        for w in work:
            if w.outbound and self._owner(w.address) is channel:
                timer = self._timers.pop(w.session_key, None)
                if timer is not None:
                    timer.cancel()
                self._outbox.add(w.session_key)
                self._wake(w.session_key)

    # -- the door ----------------------------------------------------------------

    async def admits(self, inbound: Inbound) -> bool:
        """Would ``accept`` queue ``inbound`` for an answer?  No side effects.

        True when access allows it (no pairing code is created for a stranger), mention
        gating passes, it is not empty (text, media or a quote) and it was not stored
        before.  Channels ask this before downloading media.
        """
        if not (inbound.text.strip() or inbound.media or inbound.quoted):
            return False
        decision = await self.access.check(inbound, dry_run=True)
        if not decision.allowed:
            return False
        a = inbound.address
        return not await self.store.has_inbound(a.channel, a.account, inbound.message_id)

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

    def _wake_later(self, key: str, delay: float) -> None:
        """Deliver and resume ``key`` after ``delay`` s (keeps an earlier timer)."""
        if self._stopping or self._loop is None:
            return
        due = self._loop.time() + delay
        timer = self._timers.get(key)
        if timer is not None:
            if timer.when() <= due:
                return
            timer.cancel()
        self._timers[key] = self._loop.call_at(due, self._timer_fired, key)

    def _timer_fired(self, key: str) -> None:
        self._timers.pop(key, None)
        self._outbox.add(key)
        self._wake(key)

    async def _worker(self, key: str) -> None:
        try:
            while not self._stopping:
                self._dirty.discard(key)
                if key in self._outbox:
                    self._outbox.discard(key)
                    await self._flush(key)
                claim = await self.store.claim_next(key, is_command=is_command)
                if claim is None:
                    if key in self._dirty or key in self._outbox:
                        continue
                    break
                progress = await self._run_claim(claim)
                if progress.requeued:
                    self._wake_later(key, self._worker_restart_s)
                    break
                if not claim.more and key not in self._dirty and key not in self._outbox:
                    # Nothing was left behind this claim and nothing was accepted since
                    # (accept marks the session dirty): skip the empty claim_next.
                    break
        except asyncio.CancelledError:
            raise
        except Exception:
            # The store failed; what was claimed stays in the queue.  Try again shortly
            # rather than leaving the chat silent until the next message or restart.
            log.exception("session worker %s stopped; restarting it in %.0f s", key,
                          self._worker_restart_s)
            self._wake_later(key, self._worker_restart_s)
        finally:
            if self._workers.get(key) is asyncio.current_task():
                del self._workers[key]
            if not self._workers:
                self._idle.set()

    async def _run_claim(self, claim: Claim) -> _Progress:
        started = time.monotonic()
        progress = _Progress()
        try:
            if claim.kind is MessageKind.COMMAND:
                await self._run_command(claim, started, progress)
            else:
                await self._run_chat(claim, started, progress)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("turn %d of %s failed unexpectedly", claim.turn_id, claim.session_key)
            if progress.finished:
                # The reply is stored (pending); a failure after that (e.g. marking it
                # delivered) must not answer the turn a second time.
                return progress
            try:
                out = await self._finish(
                    claim, progress, reply=INTERNAL_ERROR, answered=False,
                    reason=f"internal error: {type(exc).__name__}",
                    reply_kind=MessageKind.APOLOGY, reply_to_message_id=_quote_id(claim))
            except Exception:
                log.exception("turn %d of %s could not be recorded; its messages go back to "
                              "the queue", claim.turn_id, claim.session_key)
                await self._requeue(claim, progress)
                return progress
            delivered = await self._deliver_reply(out)
            self._emit(_event(claim, answered=False, started=started, delivered=delivered,
                              reason="internal error", reply=out.text))
        return progress

    async def _finish(self, claim: Claim, progress: _Progress, **kwargs: Any) -> StoredMessage:
        """``store.finish_turn`` — and the claim's messages stop counting as pending."""
        out = await self.store.finish_turn(claim.turn_id, **kwargs)
        progress.finished = True
        self._pending -= len(claim.messages)
        return out

    async def _requeue(self, claim: Claim, progress: _Progress) -> None:
        progress.requeued = True
        try:
            await self.store.requeue_turn(claim.turn_id)
        except Exception:
            log.exception("turn %d of %s stays processing until the next start",
                          claim.turn_id, claim.session_key)

    # -- commands ----------------------------------------------------------------

    async def _run_command(self, claim: Claim, started: float, progress: _Progress) -> None:
        msg = claim.messages[0]
        parsed = parse_command(msg.text)
        assert parsed is not None
        name, arg = parsed
        ctx = CommandContext(config=self._config(), store=self.store, message=msg,
                             override=self._overrides.get(claim.session_key))
        reply = await run_command(ctx, name, arg)
        out = await self._finish(claim, progress, reply=reply, reply_kind=MessageKind.COMMAND,
                                 reply_to_message_id=_quote_id(claim))
        delivered = await self._deliver_reply(out)
        log.info("command session=%s turn=%d /%s duration=%.3fs", claim.session_key,
                 claim.turn_id, name, time.monotonic() - started)
        self._emit(_event(claim, answered=True, started=started, delivered=delivered,
                          reply=reply))

    # -- chat turns ----------------------------------------------------------------

    def _turn_slot(self, config: Config) -> contextlib.AbstractAsyncContextManager[Any]:
        """A place among ``maxConcurrentTurns`` model turns (0: unlimited)."""
        limit = config.agents.defaults.maxConcurrentTurns
        if limit <= 0:
            return contextlib.nullcontext()
        if self._slots is None or self._slots_limit != limit:
            # A reload changes the limit: turns holding the old semaphore release it.
            self._slots = asyncio.Semaphore(limit)
            self._slots_limit = limit
        return self._slots

    async def _run_chat(self, claim: Claim, started: float, progress: _Progress) -> None:
        config = self._config()
        last = claim.messages[-1]
        a = last.address
        group = a.chat_kind is ChatKind.GROUP
        choice = await choose_models(config, self.store, last,
                                     override=self._overrides.get(claim.session_key))
        if not choice.candidates:
            await self._fail(claim, progress, started, AllModelsFailed(()),
                             "no model is configured")
            return
        models = _resolved(config, choice.candidates)
        read_budget = max((prompt_budget(m) for m in models), default=None)
        session, window = await self.store.session_with_history(
            claim.session_id, token_budget=read_budget, estimate=estimate_tokens)
        history = window.turns
        instructions = config.system_prompt_for(
            a.channel, chat_kind=a.chat_kind.value, chat_id=a.chat_id,
            sender_id=last.sender_id, thread_id=a.thread_id)
        compaction = config.agents.defaults.compaction
        state = _TurnState()
        reply: ModelReply | None = None
        failure: AllModelsFailed | None = None
        earlier: tuple[Attempt, ...] = ()

        channel = self._channel_for(last)
        typing = channel.typing(a) if channel is not None else contextlib.nullcontext()
        async with typing, self._turn_slot(config):
            model_started = time.monotonic()
            primary = models[0] if models and models[0].ref == choice.candidates[0] else None
            # Proactive compaction: the primary's window cannot hold the whole history.
            if compaction.enabled and primary is not None and (history or window.left_out):
                built = await self._build(primary, config, instructions, session, history,
                                          claim, group)
                through = None
                if built.omitted_turn_ids or window.left_out:
                    through = plan_compaction(
                        built, keep_recent=compaction.keepRecentTurns,
                        summary_tokens=summary_token_cap(primary), left_out=window.left_out)
                compacted = None
                if through is not None:
                    compacted = await self._compact(config, choice, session, history, through,
                                                    group, left_out=window.left_out,
                                                    read_budget=read_budget)
                if compacted is not None:
                    session, history = compacted
                    state.compacted = True  # the prompt is built again from the summary
                else:
                    state.built[primary.ref] = built
            try:
                reply = await self._complete(config, choice, instructions, session, history,
                                             claim, group, state)
            except AllModelsFailed as exc:
                failure = exc
                if exc.context_overflow and compaction.enabled and history:
                    log.info("context overflow in %s: compacting and retrying once",
                             claim.session_key)
                    compacted = await self._compact(config, choice, session, history,
                                                    history[-1].turn_id, group)
                    if compacted is not None:
                        session, history = compacted
                        state = _TurnState(compacted=True)
                        earlier = exc.attempts
                        try:
                            reply = await self._complete(config, choice, instructions,
                                                         session, history, claim, group, state)
                            failure = None
                        except AllModelsFailed as exc2:
                            failure = exc2
            model_duration = time.monotonic() - model_started

        if reply is None:
            assert failure is not None
            await self._fail(claim, progress, started, failure, None,
                             model_duration=model_duration, earlier=earlier)
            return
        built = state.built.get(reply.model_ref)
        try:
            window_size = config.model(reply.model_ref).context_window
        except KeyError:
            window_size = None
        out = await self._finish(
            claim, progress, reply=reply.text, model_ref=reply.model_ref, usage=reply.usage,
            attempts=reply.attempts, reply_to_message_id=_quote_id(claim),
            prompt_tokens_estimate=built.prompt_tokens if built else None,
            context_window=window_size)
        delivered = await self._deliver_reply(out)
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
            settings=config.agents.defaults, cache=self.prompt_cache)

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

        reply = await self.router.complete(list(choice.candidates), request_for)
        if not reply.text.strip():
            raise AllModelsFailed(reply.attempts)
        return reply

    async def _compact(self, config: Config, choice: ModelChoice, session: SessionRecord,
                       history: list[HistoryTurn], through: int, group: bool, *,
                       left_out: int = 0, read_budget: int | None = None,
                       ) -> tuple[SessionRecord, list[HistoryTurn]] | None:
        """Summarise the turns up to ``through`` (with the previous summary); store it;
        return the new session and the history after ``through``."""
        if left_out:
            # Some of them were never read (they did not fit): read what the summariser
            # can take, newest first.
            older = await self.store.history(
                session.id, after_turn=session.summary_through_turn, through_turn=through,
                token_budget=2 * read_budget if read_budget else None,
                estimate=estimate_tokens)
        else:
            older = [t for t in history if t.turn_id <= through]
        if not older:
            return None
        compaction = config.agents.defaults.compaction
        candidates = list(choice.candidates)
        try:
            cap = summary_token_cap(config.model(candidates[0]))
        except KeyError:
            cap = 1024
        if compaction.model:
            try:
                ref = config.resolve_ref(compaction.model)
                candidates = [ref, *[c for c in candidates if c != ref]]
            except KeyError as exc:
                log.warning("compaction.model does not resolve (%s); using the session's", exc)

        def request_for(model: ResolvedModel) -> ModelRequest:
            return compaction_request(model, session.summary, older, group=group,
                                      summary_tokens=cap)

        started = time.monotonic()
        try:
            reply = await self.router.complete(candidates, request_for)
        except AllModelsFailed as exc:
            log.warning("compaction of %s failed: %s", session.session_key, exc)
            return None
        summary = truncate_to_tokens(reply.text.strip(), cap)
        if not summary:
            return None
        await self.store.save_summary(session.id, summary, through)
        log.info("compacted session=%s turns=%d model=%s duration=%.2fs", session.session_key,
                 len(older) + left_out, reply.model_ref, time.monotonic() - started)
        new_session = await self.store.session(session.id)
        assert new_session is not None
        return new_session, [t for t in history if t.turn_id > through]

    async def _fail(self, claim: Claim, progress: _Progress, started: float,
                    exc: AllModelsFailed, reason: str | None, *, model_duration: float = 0.0,
                    earlier: tuple[Attempt, ...] = ()) -> None:
        attempts = (*earlier, *exc.attempts)
        reason = reason or str(AllModelsFailed(attempts))
        out = await self._finish(
            claim, progress, reply=APOLOGY, answered=False, reason=reason[:1000],
            reply_kind=MessageKind.APOLOGY, attempts=attempts,
            reply_to_message_id=_quote_id(claim))
        delivered = await self._deliver_reply(out)
        self._log_turn(self._config(), claim, None, attempts, started, model_duration,
                       answered=False, delivered=delivered, reason=reason)
        self._emit(_event(claim, answered=False, started=started, delivered=delivered,
                          attempts=attempts, model_duration=model_duration, reason=reason,
                          reply=out.text))

    # -- delivery ------------------------------------------------------------------

    def _channel_for(self, msg: StoredMessage) -> Channel | None:
        return self._owner(msg.address)

    async def _deliver_reply(self, out: StoredMessage) -> bool:
        """Send a reply just stored; behind earlier replies of its chat still waiting."""
        if out.session_key in self._held:
            return (await self._flush(out.session_key)).get(out.id) == _SENT
        return await self._send(out) == _SENT

    async def _flush(self, key: str) -> dict[int, str]:
        """Send a session's undelivered replies in order; stop at one that must wait."""
        results: dict[int, str] = {}
        for msg in await self.store.undelivered(key):
            result = results[msg.id] = await self._send(msg)
            if result in (_RETRY, _NO_CHANNEL):
                break
        else:
            self._held.discard(key)
        return results

    async def _send(self, msg: StoredMessage) -> str:
        """Send one stored reply; mark it delivered, retried later, or failed."""
        channel = self._channel_for(msg)
        if channel is None:
            log.warning("no %s/%s channel serves %s; reply %d stays queued",
                        msg.address.channel, msg.address.account, msg.session_key, msg.id)
            return _NO_CHANNEL
        out = Outbound(msg.address, msg.text, reply_to_message_id=msg.reply_to_message_id,
                       plain=msg.plain)
        try:
            ids = await channel.send(out)
        except asyncio.CancelledError:
            raise
        except SendError as exc:
            if exc.retryable:
                return await self._retry_later(msg, str(exc), exc.sent_ids)
            log.warning("could not deliver reply %d to %s %s: %s", msg.id, msg.address.channel,
                        msg.address.chat_id, exc)
            await self.store.mark_send_failed(msg.id, str(exc), exc.sent_ids)
            return _FAILED
        except Exception as exc:
            # Not a SendError: the message may or may not have gone out, and sending it
            # again could deliver it twice — so it is not retried.
            log.exception("channel %s failed sending reply %d", msg.address.channel, msg.id)
            await self.store.mark_send_failed(msg.id, f"{type(exc).__name__}: {exc}")
            return _FAILED
        await self.store.mark_delivered(msg.id, [str(i) for i in ids])
        return _SENT

    async def _retry_later(self, msg: StoredMessage, reason: str, sent_ids: list[str]) -> str:
        attempts = msg.send_attempts + 1
        where = f"{msg.address.channel} {msg.address.chat_id}"
        if attempts > len(self._retry_delays):
            log.warning("giving up on reply %d to %s after %d attempts: %s", msg.id, where,
                        attempts, reason)
            await self.store.mark_send_failed(
                msg.id, f"gave up after {attempts} attempts: {reason}", sent_ids)
            return _FAILED
        delay = self._retry_delays[attempts - 1]
        log.info("reply %d to %s not sent (%s); attempt %d failed, next in %g s", msg.id,
                 where, reason, attempts, delay)
        await self.store.mark_send_retry(msg.id, reason, next_attempt_at=time.time() + delay,
                                         sent_ids=sent_ids)
        self._held.add(msg.session_key)
        self._wake_later(msg.session_key, delay)
        return _RETRY

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


def _resolved(config: Config, refs: Sequence[str]) -> list[ResolvedModel]:
    out = []
    for ref in refs:
        try:
            out.append(config.model(ref))
        except KeyError:
            continue
    return out


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
