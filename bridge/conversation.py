"""The conversation core: every channel's messages go through here.

``ConversationCore.accept()`` checks access and stores the message before anything else,
then wakes the one worker of its session: messages of one chat are answered in order,
different chats in parallel, and messages that arrive while a turn runs are answered
together in the next turn (with ``debounceMs``, a message to an idle session waits that
long for more).  ``/stop`` is answered here, before the queue: it cancels the session's
running model call (when another process owns the chat, that process is asked to and
answers it).  An admitted message gets its acknowledgement reaction
(:mod:`bridge.reactions`) as soon as it is stored, and in groups the text of messages not
addressed to the bot is kept for its next answer there (``groupContextMessages``).

This module is the door and that per-session scheduler; a turn itself (a command, or
prompt, compaction and model call) is :mod:`bridge.turn`, and sending the stored replies
in order, with retries, is the outbox (:mod:`bridge.delivery`).  At most
``agents.defaults.maxConcurrentTurns`` model turns run at once.  A reply that must wait
for a retry is sent when its delay has passed, or at once when the channel reports it is
ready again (``channel_ready``).  On start, whatever a crash left half done is picked up
again — for the sessions the attached channels own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bridge import live
from bridge.access import AccessControl, Verdict
from bridge.commands import NOTHING_RUNNING, STOPPED, CommandServices, is_command, is_stop
from bridge.config.resolve import group_context_for
from bridge.delivery import SEND_RETRY_DELAYS, Outbox
from bridge.envelope import AcceptStatus, ChatAddress, ChatKind, Inbound
from bridge.ports import InboundSink, StoreUnavailable
from bridge.prompt import PromptCache, visible_text
from bridge.reactions import AckReactions
from bridge.store import MessageKind, MessageStatus, Store
from bridge.store.coord import (
    Coordinator,
    LocalCoordinator,
    Lost,
    Reaped,
    Wake,
    answer_stop_body,
    queued_stops_body,
)
from bridge.store.db import StoreError, unavailable_reason
from bridge.store.notices import queue_notice
from bridge.store.records import RecoveryReport
from bridge.turn import APOLOGY, INTERNAL_ERROR, TurnEvent, TurnRunner
from bridge.usage.limits import REASON as LIMIT
from bridge.usage.limits import LimitGate

if TYPE_CHECKING:
    from bridge.config.schema import Config
    from bridge.media import MediaStore
    from bridge.models.base import Router
    from bridge.ports import Channel
    from bridge.voice.wiring import VoiceService

# Names that lived here before the split, still importable from this module.
__all__ = ["APOLOGY", "INTERNAL_ERROR", "SEND_RETRY_DELAYS", "WORKER_RESTART_S",
           "AcceptEvent", "ConversationCore", "Observer", "TurnEvent"]

log = logging.getLogger(__name__)

# A session worker stopped by a store error is started again after this long.
WORKER_RESTART_S = 5.0
# accept(): waits before trying a write the store refused again (each try also waits up
# to the store's busy timeout on a lock); then StoreUnavailable.
STORE_RETRY_DELAYS = (0.25, 1.0)
# Refused/ignored traffic older than store.retentionDays is pruned at start and this often.
PRUNE_EVERY_S = 3600.0
# One log line per reason, then one summary line per this many seconds.
DOOR_LOG_WINDOW_S = 60.0


def _stop_quote(address: ChatAddress, message_id: str | None) -> str | None:
    """What a ``/stop``'s reply quotes: the ``/stop`` itself, in a group."""
    return message_id if address.chat_kind is ChatKind.GROUP else None


def has_content(inbound: Inbound) -> bool:
    """Something to answer: visible text, media or a quote (a message of zero-width
    characters or NULs only is empty)."""
    return bool(visible_text(inbound.text).strip() or inbound.media or inbound.quoted)


def _without_content(inbound: Inbound) -> Inbound:
    """What is kept of refused and ignored traffic: who, where, when, why — no text, no
    media references (no file ids to fetch them by), no quote."""
    return replace(inbound, text="", media=(), quoted=None)


# An unaddressed group message kept as context keeps at most this much of its text.
CONTEXT_MAX_CHARS = 1000


def _context_only(inbound: Inbound) -> Inbound:
    """What is kept of an unaddressed group message for the group's context: who, and
    its text (clipped) with its media as placeholders — no media references, no quote."""
    text = visible_text(inbound.text).strip()
    if len(text) > CONTEXT_MAX_CHARS:
        text = text[:CONTEXT_MAX_CHARS - 1].rstrip() + "…"
    shown = " ".join([*(m.placeholder() for m in inbound.media), *([text] if text else [])])
    return replace(inbound, text=shown, media=(), quoted=None)


class _DoorLog:
    """Refused/ignored log lines, rate limited: the first of a reason is logged, the
    rest of the minute is counted and summed up in one line when the minute is over."""

    def __init__(self, window_s: float = DOOR_LOG_WINDOW_S) -> None:
        self.window_s = window_s
        # key -> [count since the first line, level, summary words, timer]
        self._open: dict[tuple[str, str, str], list[Any]] = {}

    def note(self, level: int, key: tuple[str, str, str], first: str, *args: Any,
             summary: str) -> None:
        entry = self._open.get(key)
        if entry is not None:
            entry[0] += 1
            return
        log.log(level, first, *args)
        timer = None
        try:
            timer = asyncio.get_running_loop().call_later(self.window_s, self._close, key)
        except RuntimeError:
            pass
        self._open[key] = [0, level, summary, timer]
        if timer is None:
            self._close(key)

    def _close(self, key: tuple[str, str, str]) -> None:
        entry = self._open.pop(key, None)
        if entry is None:
            return
        count, level, summary, timer = entry
        if timer is not None:
            timer.cancel()
        if count:
            log.log(level, "%s %d more %s message(s) in the last %.0f s: %s", key[0], count,
                    key[1], self.window_s, summary)

    def flush(self) -> None:
        for key in list(self._open):
            self._close(key)


@dataclass(frozen=True, slots=True)
class AcceptEvent:
    """An inbound message reached the door (for metrics)."""

    channel: str
    session_key: str
    status: AcceptStatus
    reason: str = ""
    code: str = ""  # short fixed word for refused/ignored (see AccessDecision.code)


Observer = Callable[[AcceptEvent | TurnEvent], Any]


@dataclass(slots=True, eq=False)
class _Session:
    """The scheduler's state of one session key (dropped again when it is idle)."""

    key: str
    worker: asyncio.Task[None] | None = None
    dirty: bool = False  # woken while its worker was busy
    flush: bool = False  # may have replies waiting to be delivered
    timer: asyncio.TimerHandle | None = None  # a send retry or a worker restart is due
    override: str | None = None  # a model outranking the /model choice (not persisted)
    # debounceMs: the worker starts when this fires (None: not waiting); first_seen is
    # when the wait began (it never lasts more than 4 x debounceMs from then).
    debounce: asyncio.TimerHandle | None = None
    first_seen: float = 0.0

    @property
    def idle(self) -> bool:
        return (self.worker is None and self.timer is None and not self.flush
                and self.override is None and self.debounce is None)


class ConversationCore(InboundSink):
    """The :class:`~bridge.ports.InboundSink` every channel hands messages to.

    ``config`` is a callable returning the live config (read at every turn), or a
    ``Config``.  ``router`` answers model calls (:class:`~bridge.models.base.Router`).
    ``config_path`` (the file the live config is loaded from) and ``reload_config``
    let owner commands write the config (``/model REF --channel``) and apply it at once.
    ``send_retry_delays`` and ``worker_restart_s`` are for tests.
    """

    def __init__(
        self,
        store: Store,
        config: Callable[[], Config] | Config,
        router: Router,
        *,
        media: MediaStore | None = None,
        channels: Iterable[Channel] = (),
        access: AccessControl | None = None,
        send_retry_delays: Sequence[float] = SEND_RETRY_DELAYS,
        worker_restart_s: float = WORKER_RESTART_S,
        store_retry_delays: Sequence[float] | None = None,
        prune_every_s: float = PRUNE_EVERY_S,
        config_path: Path | None = None,
        reload_config: Callable[[], Awaitable[object]] | None = None,
        voice: VoiceService | None = None,
        coordinator: Coordinator | None = None,
    ) -> None:
        self.store = store
        # Which chats this process answers when several share one PostgreSQL store
        # (bridge.store.coord); alone on SQLite, all of them.
        self.coord: Coordinator = coordinator or LocalCoordinator()
        self.coord.on_wake(self._cluster_wake)
        self.coord.on_lost(self._cluster_lost)
        self.coord.on_reaped(self._cluster_reaped)
        # Voice notes: transcribed at the door, heard for mentions (None: not wired).
        self.voice = voice
        self._config: Callable[[], Config] = config if callable(config) else (lambda: config)
        self.router = router
        self.media = media
        self.access = access or AccessControl(store, self._config)
        self.limits = LimitGate(store, self._config)  # limits: bridge.usage.limits
        self._channels: dict[tuple[str, str], Channel] = {}
        for channel in channels:
            self.attach(channel)
        self._worker_restart_s = worker_restart_s
        self._store_retry_delays = tuple(STORE_RETRY_DELAYS if store_retry_delays is None
                                         else store_retry_delays)
        self._prune_every_s = prune_every_s
        self._prune_task: asyncio.Task[None] | None = None
        self._door_log = _DoorLog()
        # Why the last accept() could not store (None: the store takes writes).
        self._store_problem: str | None = None
        self._store_problem_since = 0.0
        self._sessions: dict[str, _Session] = {}
        self._busy = 0  # sessions with a worker running
        self._side_tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._observers: list[Observer] = []
        self._idle = asyncio.Event()
        self._idle.set()
        self._started = False
        self._stopping = False
        self._pending = 0  # inbound messages accepted and not yet answered or failed
        # History turns rendered for prompts (those that cannot change), reused turn
        # after turn; the store keeps the turns it read (Store.turn_cache).
        self.prompt_cache = PromptCache()
        self.outbox = Outbox(store, self._owner, self._wake_later,
                             retry_delays=send_retry_delays, check=self.coord.check_owned)
        # The running model call of each session, for /stop.
        self._active = live.ActiveTurns()
        # Acknowledgement reactions: set at the door, cleared when the answer is delivered.
        self.reactions = AckReactions(store, self._config, self._owner, self._spawn,
                                      attached=lambda: self._channels.values())
        self.outbox.on_delivered = self.reactions.delivered
        self._turns = TurnRunner(
            store=store, config=self._config, router=router, media=media,
            prompt_cache=self.prompt_cache, outbox=self.outbox, route=self._owner,
            emit=self._emit, answered=self._answered, voice=voice,
            active=self._active, reactions=self.reactions,
            # What owner commands may use of this process.
            commands=CommandServices(config_path=config_path, reload_config=reload_config,
                                     tell=self.tell))

    # -- wiring ------------------------------------------------------------------

    def attach(self, channel: Channel) -> None:
        """Let the core send through ``channel`` (keyed by its name and account)."""
        self._channels[(channel.name, channel.account)] = channel

    def add_observer(self, observer: Observer) -> None:
        """Call ``observer(event)`` for every AcceptEvent and TurnEvent (must not block)."""
        self._observers.append(observer)

    def set_model_override(self, session_key: str, ref: str | None) -> None:
        """A model for one session outranking its /model choice (not persisted)."""
        if ref is None:
            state = self._sessions.get(session_key)
            if state is not None:
                state.override = None
                self._forget_if_idle(state)
        else:
            self._session(session_key).override = ref

    @property
    def busy_sessions(self) -> int:
        """Sessions with a worker running right now."""
        return self._busy

    @property
    def store_problem(self) -> str | None:
        """Why inbound messages cannot be stored right now (``None``: they can).

        Set when accept() raised StoreUnavailable, cleared by the next stored message;
        the app reports itself not ready meanwhile."""
        return self._store_problem

    def pending_count(self) -> int:
        """Inbound messages accepted and not yet answered or failed (cheap, in memory)."""
        return max(0, self._pending)

    def _owner(self, address: ChatAddress) -> Channel | None:
        """The attached channel serving ``address`` (``None``: not this process's chat)."""
        channel = self._channels.get((address.channel, address.account))
        if channel is None or not channel.owns(address):
            return None
        return channel

    def _session(self, key: str) -> _Session:
        state = self._sessions.get(key)
        if state is None:
            state = self._sessions[key] = _Session(key)
        return state

    def _forget_if_idle(self, state: _Session) -> None:
        if state.idle and self._sessions.get(state.key) is state:
            del self._sessions[state.key]

    def _answered(self, messages: int) -> None:
        self._pending -= messages

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> RecoveryReport:
        """Recover what a crash left and resume the queues — only for the sessions the
        attached channels own (another process may serve the others)."""
        self._loop = asyncio.get_running_loop()
        names = sorted({name for name, _account in self._channels})
        work = [w for w in await self.store.open_work(names) if self._owner(w.address)]
        if self.coord.process_id is None:  # alone on this store (SQLite): recover it all
            report = await self.store.recover(names,
                                              session_keys=[w.session_key for w in work])
        else:  # several processes: the reaper requeues what dead ones left
            report = RecoveryReport(requeued=0, interrupted_turns=0, undelivered=0)
        if report.requeued or report.undelivered:
            log.info("recovery: %d message(s) requeued, %d turn(s) interrupted, "
                     "%d reply(ies) to deliver", report.requeued, report.interrupted_turns,
                     report.undelivered)
        self._pending = sum(w.inbound for w in work)
        self._started = True
        self._stopping = False
        # Edit-mode previews a crash left behind are removed (their turns run again).
        # With peers only those of interrupted turns: the others may be streaming into
        # theirs right now, or finishing into them.
        if self.coord.process_id is None:
            self._spawn(live.discard_stale_previews(self.store,
                                                    list(self._channels.values())),
                        name="discard stale previews")
        else:
            self._spawn(live.discard_interrupted_previews(self.store,
                                                          list(self._channels.values())),
                        name="discard interrupted previews")
        await self.prune_refused()
        if self._prune_every_s > 0 and (self._prune_task is None or self._prune_task.done()):
            self._prune_task = self._loop.create_task(self._prune_periodically(),
                                                      name="prune refused traffic")
        for w in work:
            if w.outbound:
                self._session(w.session_key).flush = True
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
        for state in list(self._sessions.values()):
            if state.timer is not None:
                state.timer.cancel()
                state.timer = None
            if state.debounce is not None:  # stored; answered after the next start
                state.debounce.cancel()
                state.debounce = None
        side = list(self._side_tasks)
        prune, self._prune_task = self._prune_task, None
        if prune is not None:
            side.append(prune)
        self._door_log.flush()
        for task in side:
            task.cancel()
        if side:
            await asyncio.gather(*side, return_exceptions=True)
        tasks = [s.worker for s in self._sessions.values() if s.worker is not None]
        if tasks:
            log.info("waiting up to %.0f s for %d running turn(s)", grace, len(tasks))
            _done, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("%d turn(s) did not finish in %.0f s; they will be answered "
                            "after the next start", len(pending), grace)
                await asyncio.gather(*pending, return_exceptions=True)
        self.outbox.release_all()
        for state in list(self._sessions.values()):
            self._forget_if_idle(state)
        if not self._busy:
            self._idle.set()
        self._started = False

    async def wait_idle(self) -> None:
        """Until no session has work in progress (tests, benchmarks, scripted chat).

        Replies waiting for a retry later do not count as work in progress; messages
        waiting out ``debounceMs`` do.
        """
        while self._busy or self._debouncing():
            await self._idle.wait()

    def _debouncing(self) -> bool:
        return any(s.debounce is not None for s in self._sessions.values())

    def channel_ready(self, channel: Channel) -> None:
        """``channel`` is connected (again): send its queued replies now.

        Channels call this whenever they (re)connect; safe to call from any thread,
        before ``start()`` (a no-op then) or repeatedly.
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
        self._spawn(self._resume_channel(channel), name=f"resume {channel.name}")

    def _spawn(self, coro: Coroutine[Any, Any, object], *,
               name: str | None = None) -> asyncio.Task[Any] | None:
        """Run ``coro`` as a side task the core owns (cancelled and awaited on stop);
        None (and ``coro`` closed) while the core is stopping or has no loop."""
        if self._stopping or self._loop is None or self._loop.is_closed():
            coro.close()
            return None
        task = self._loop.create_task(coro, name=name)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)
        return task

    async def _resume_channel(self, channel: Channel) -> None:
        try:
            keys = await self.outbox.queued_sessions(channel)
        except Exception:
            log.exception("could not look up queued replies of %s", channel.name)
            return
        for key in keys:
            state = self._session(key)
            if state.timer is not None:
                state.timer.cancel()
                state.timer = None
            state.flush = True
            self._wake(key)

    # -- retention -----------------------------------------------------------------

    async def prune_refused(self) -> int:
        """Delete refused/ignored traffic older than ``store.retentionDays``; never raises."""
        days = self._config().store.retentionDays
        try:
            removed = await self.store.prune_refused(time.time() - days * 86400.0)
        except Exception as exc:  # a full or locked disk: try again at the next round
            log.warning("could not prune refused and ignored messages: %s",
                        unavailable_reason(exc) or exc)
            return 0
        if removed:
            log.info("pruned %d refused or ignored message(s) older than %d day(s)",
                     removed, days)
        return removed

    async def _prune_periodically(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self._prune_every_s)
            await self.prune_refused()

    # -- the door ----------------------------------------------------------------

    async def admits(self, inbound: Inbound) -> bool:
        """Would ``accept`` queue ``inbound`` for an answer?  No side effects.

        True when access allows it (no pairing code is created for a stranger), mention
        gating passes, it is not empty (visible text, media or a quote: zero-width or
        control characters alone are empty) and it was not stored before.  Channels ask
        this before downloading media.
        """
        if not has_content(inbound):
            return False
        decision = await self.access.check(inbound, dry_run=True)
        if not decision.allowed and not self._may_name_the_bot(inbound, decision.code):
            return False
        if not await self.limits.would_admit(inbound):
            return False
        a = inbound.address
        return not await self.store.has_inbound(a.channel, a.account, inbound.message_id)

    async def accept(self, inbound: Inbound) -> AcceptStatus:
        """Check access, persist (idempotent), wake the session's worker.

        Raises :class:`~bridge.ports.StoreUnavailable` when the store cannot take the
        write (disk full, locked, read-only, I/O error) after a few short retries: the
        channel must not confirm the message and must offer it again later.
        """
        delays = self._store_retry_delays
        for attempt in range(len(delays) + 1):
            try:
                result = await self._accept_once(inbound)
            except StoreError as exc:
                reason = unavailable_reason(exc)
                if reason is None:
                    raise  # not the store's state: a bug or a bad row
                if attempt < len(delays):
                    await asyncio.sleep(delays[attempt])
                    continue
                if self._store_problem is None:
                    self._store_problem_since = time.monotonic()
                    log.warning("store unavailable (%s): incoming messages are not "
                                "confirmed to the platforms and wait there until a write "
                                "succeeds", reason)
                self._store_problem = reason
                raise StoreUnavailable(reason) from exc
            if self._store_problem is not None:
                log.info("store writable again after %.0f s (was: %s); incoming messages "
                         "resume", time.monotonic() - self._store_problem_since,
                         self._store_problem)
                self._store_problem = None
            return result
        raise AssertionError("unreachable")

    def _may_name_the_bot(self, inbound: Inbound, code: str) -> bool:
        """An unmentioned voice note in an admitted group with ``transcribeForMentions``:
        downloaded, and heard for the bot's name before the mention check."""
        return (code == "no_mention" and self.voice is not None
                and self.voice.wants_to_hear(inbound))

    async def _heard_by_name(self, inbound: Inbound) -> bool:
        """Whether ``inbound``'s voice note says the bot's name (its channel's names)."""
        assert self.voice is not None
        channel = self._owner(inbound.address)
        names = channel.spoken_names() if channel is not None else ()
        try:
            return await self.voice.says_name(inbound, names)
        except StoreError:
            raise
        except Exception:
            log.exception("voice: could not hear %s message %s for a mention",
                          inbound.address.channel, inbound.message_id)
            return False

    async def _accept_once(self, inbound: Inbound) -> AcceptStatus:
        key = str(inbound.session_key)
        decision = await self.access.check(inbound)
        if (decision.verdict is Verdict.IGNORE
                and self._may_name_the_bot(inbound, decision.code)):
            if await self._heard_by_name(inbound):
                # Said the bot's name: a mention, checked again as one.
                inbound = replace(inbound, mentioned=True)
                decision = await self.access.check(inbound)
            else:
                await self.voice.forget_unheard(inbound)  # type: ignore[union-attr]
        if decision.allowed and is_stop(inbound.text):
            return await self._stop(inbound)
        code, reply, reply_kind = decision.code, decision.reply, MessageKind.PAIRING
        if decision.allowed and not has_content(inbound):
            status, reason, code = MessageStatus.IGNORED, "empty message", "empty"
        elif decision.allowed:
            status, reason = MessageStatus.RECEIVED, None
            limit = await self.limits.admit(inbound)
            if not limit.admitted:  # refused; told once (the notice), then silence
                status, reason, code = MessageStatus.REFUSED, LIMIT, LIMIT
                reply, reply_kind = limit.notice, MessageKind.APOLOGY
        elif decision.verdict is Verdict.IGNORE:
            status, reason = MessageStatus.IGNORED, decision.reason
        else:
            status, reason = MessageStatus.REFUSED, decision.reason
        # Only what is answered keeps its text: a stranger's words are nobody's business
        # here, and a group's talk not addressed to the bot only as the group's context.
        context = status is MessageStatus.IGNORED and self._keeps_context(inbound, code)
        if status is MessageStatus.RECEIVED:
            kept = inbound
        else:
            kept = _context_only(inbound) if context else _without_content(inbound)
        if status is MessageStatus.RECEIVED and self.media is not None:
            # Several processes: another one may run this turn; its media must be in the
            # store first (a no-op on SQLite and for media put here).  Raises StoreError
            # while the store cannot take it: the message is then not confirmed.
            await self.media.ensure_shared(
                [r.media_id for r in inbound.media]
                + ([r.media_id for r in inbound.quoted.media] if inbound.quoted else []))
        row_id = await self.store.record_inbound(
            kept, status=status, reason=reason, reply=reply, reply_kind=reply_kind,
            context=context)
        a = inbound.address
        if row_id is None:
            result = AcceptStatus.DUPLICATE
        elif status is MessageStatus.RECEIVED:
            result = AcceptStatus.ACCEPTED
            self._pending += 1
            if self.voice is not None:
                # Transcribing starts now; the turn awaits the same call.
                self.voice.admitted(inbound, row_id)
            owned = await self._take(key)  # False: another live process answers this
            if is_command(inbound.text):   # chat, and the stored message's notification
                if owned:                  # woke it
                    self._wake(key)
            elif owned:
                self.reactions.acknowledge(inbound)
                self._wake_debounced(key, a)
            # else: the chat's owner sets the ack (it reads the stored message when its
            # notification wakes it), so that every reaction of the chat comes from one
            # process, in order
        elif status is MessageStatus.REFUSED:
            result = AcceptStatus.REFUSED
            self._door_log.note(
                logging.INFO, ("refused", a.channel, code or reason or ""),
                "refused %s message %s from %s in %s: %s", a.channel, inbound.message_id,
                inbound.sender_id, a.chat_id, reason, summary=reason or "")
            if reply is not None and await self._take(key):
                self._session(key).flush = True
                self._wake(key)
        else:
            result = AcceptStatus.IGNORED
            self._door_log.note(
                logging.DEBUG, ("ignored", a.channel, code or reason or ""),
                "ignored %s message %s in %s: %s", a.channel, inbound.message_id,
                a.chat_id, reason, summary=reason or "")
        self._emit(AcceptEvent(a.channel, key, result, reason or "", code))
        return result

    def _keeps_context(self, inbound: Inbound, code: str) -> bool:
        """Is ``inbound`` (ignored) a group message kept as the group's context?  Not
        addressed to the bot, not a command, with something to say, in a group whose
        ``groupContextMessages`` is above 0."""
        a = inbound.address
        if code != "no_mention" or a.chat_kind is not ChatKind.GROUP:
            return False
        if is_command(inbound.text) or not (visible_text(inbound.text).strip()
                                            or inbound.media):
            return False
        return group_context_for(self._config(), a.channel, a.chat_id, a.thread_id) > 0

    async def _stop(self, inbound: Inbound) -> AcceptStatus:
        """``/stop`` from someone the bot answers: cancel the session's running model call
        and say so.  The ``/stop`` and its reply are stored as one answered command that
        never enters the queue; the reply goes out as soon as the stopped turn has
        returned (or at once), in order with the session's other replies."""
        key = str(inbound.session_key)
        a = inbound.address
        if await self.store.has_inbound(a.channel, a.account, inbound.message_id):
            result = AcceptStatus.DUPLICATE  # redelivered: it stopped what it could then
        elif not await self._take(key):
            # Another live process answers this chat: its turn is stopped there.
            result = await self._stop_elsewhere(inbound)
        else:
            stopped = self._active.stop(key)
            recorded = await self.store.record_control(
                inbound, STOPPED if stopped else NOTHING_RUNNING,
                reply_to_message_id=_stop_quote(inbound.address, inbound.message_id))
            if recorded is None or recorded[0] is None:  # stored meanwhile
                result = AcceptStatus.DUPLICATE
            else:
                result = AcceptStatus.ACCEPTED
                log.info("stop session=%s: %s", key,
                         "model call cancelled" if stopped else "nothing was running")
            self._session(key).flush = True  # the chat is this process's: flush it
            self._wake(key)
        self._emit(AcceptEvent(a.channel, key, result, "stop" if result is
                               AcceptStatus.ACCEPTED else "", "stop"))
        return result

    async def _stop_elsewhere(self, inbound: Inbound) -> AcceptStatus:
        """``/stop`` for a chat another process owns (its turn runs there): stored as a
        waiting message, the owner told (``coord.request_stop``).  The owner cancels its
        turn and answers the ``/stop`` (:meth:`_answer_stops`), once; the stored message
        is the request, so a lost notification is caught by the owner's sweep, and a
        ``/stop`` nobody answered that way is claimed from the queue after the turn
        (answered "Nothing is running.": the turn ended on its own)."""
        key = str(inbound.session_key)
        if await self.store.record_inbound(inbound) is None:
            return AcceptStatus.DUPLICATE
        if await self._take(key):
            # The owner gave the chat up in between (its turn had ended): this process
            # answers the /stop from the queue.
            self._wake(key)
            return AcceptStatus.ACCEPTED
        log.info("stop session=%s: the chat's owner is another process; asking it", key)
        try:
            await self.coord.request_stop(key)
        except StoreError as exc:
            log.warning("could not tell the owner of %s to stop now (%s); its sweep will",
                        key, exc)
        return AcceptStatus.ACCEPTED

    async def _answer_stops(self, key: str) -> None:
        """Another process stored a ``/stop`` for this process's chat ``key``: cancel the
        running model call (as the door would) and answer each waiting ``/stop`` — the
        first "Stopped." when it cancelled one, the rest "Nothing is running."  A
        ``/stop`` a worker claimed meanwhile is the worker's to answer."""
        if not self.coord.owns(key):
            return
        try:
            waiting = await self.store.read_with(queued_stops_body(key))
            stops = [m for m in waiting if is_stop(m.text)]
            if not stops:
                return
            stopped = self._active.stop(key)
            answered = 0
            for msg in stops:
                reply = STOPPED if stopped and not answered else NOTHING_RUNNING
                if await self.store.atomically(answer_stop_body(
                        msg.id, self.coord.process_id, reply, now=time.time(),
                        reply_to=_stop_quote(msg.address, msg.platform_message_id))):
                    answered += 1
                    log.info("stop session=%s (received by another process): %s", key,
                             "model call cancelled" if reply == STOPPED
                             else "nothing was running")
        except Lost as exc:
            log.info("stop session=%s: %s; its owner answers it", key, exc)
            self.coord.forget(key)
            return
        except StoreError as exc:
            log.warning("stop session=%s: could not answer it now (%s); the sweep tries"
                        " again", key, exc)
            return
        if answered:
            self._session(key).flush = True
            self._wake(key)

    async def tell(self, address: ChatAddress, session_key: str, text: str) -> bool:
        """Send ``text`` to a chat outside any turn (stored first, then delivered in order
        by the outbox).  True when this process serves that chat."""
        await queue_notice(self.store, address, session_key, text)
        if await self._take(session_key):
            self._session(session_key).flush = True
            self._wake(session_key)
        return self._owner(address) is not None

    async def _take(self, key: str) -> bool:
        """Own the chat (always, alone on SQLite).  A store error here loses nothing: the
        message is stored, and the sweep gives a chat nobody owns to a live process."""
        try:
            return await self._acquire(key)
        except StoreError as exc:
            log.warning("could not take session %s now (%s); the sweep will", key, exc)
            return False

    async def _acquire(self, key: str) -> bool:
        """``coord.acquire``; a chat newly taken is flushed first: a process that owned it
        before (reaped, or fenced) may have left stored replies unsent, and they go out
        before any newer reply (the outbox sends a new reply at once unless the chat is
        held).  Alone on SQLite every chat is always owned: nothing changes."""
        fresh = not self.coord.owns(key)
        if not await self.coord.acquire(key):
            return False
        if fresh:
            self._session(key).flush = True
        return True

    # -- the cluster (bridge.store.coord) -------------------------------------------

    def _cluster_wake(self, wake: Wake) -> None:
        """The coordinator says a chat has work for this process: a notification for a
        chat it owns, or the sweep (``wake.address`` set: a chat nobody alive owns, for
        any process serving that address)."""
        if not self._started or self._stopping:
            return
        if wake.address is not None and self._owner(wake.address) is None:
            return  # not a chat this process serves (e.g. WhatsApp on a standby)
        if wake.stop:
            self._spawn(self._answer_stops(wake.session_key),
                        name=f"stop {wake.session_key}")
            return
        state = self._sessions.get(wake.session_key)
        if state is not None and state.worker is not None and self.coord.owns(
                wake.session_key):
            # Messages another process stored here get their ack from this owner: now,
            # while they wait behind the running turn (an idle chat's worker claims
            # them at once, and acknowledges the claim's).
            self.reactions.stored_elsewhere(wake.session_key)
        if wake.outbound:
            self._session(wake.session_key).flush = True
        self._wake(wake.session_key)

    def _cluster_reaped(self, reaped: Reaped) -> None:
        """This process reaped a dead one: the edit-mode previews its interrupted turns
        were streaming into are removed (their messages are answered again, by whichever
        process takes the chat, with a preview and reply of their own)."""
        if reaped.turns and self._started:
            self._spawn(live.discard_interrupted_previews(
                self.store, list(self._channels.values()), reaped.turns),
                name=f"discard previews of {reaped.process}")

    def _cluster_lost(self) -> None:
        """This process was reaped (it stalled past its lease): every chat went to others.
        Stop what runs; the fences would refuse its results anyway."""
        for state in list(self._sessions.values()):
            if state.worker is not None:
                state.worker.cancel()
        self.outbox.release_all()

    # -- workers -----------------------------------------------------------------

    def _wake_debounced(self, key: str, address: ChatAddress) -> None:
        """Wake ``key`` for a chat message — after ``debounceMs`` when its session is idle,
        so that what one sender writes in quick succession is answered in one turn.  Each
        message re-arms the wait, which never lasts more than 4 x ``debounceMs`` from the
        first one.  A session already working batches the message next anyway."""
        if not self._started or self._stopping or self._loop is None:
            return
        chan = self._config().channel(address.channel)
        delay = getattr(chan, "debounceMs", 0) / 1000.0
        state = self._session(key)
        if delay <= 0 or state.worker is not None:
            self._wake(key)
            return
        now = self._loop.time()
        if state.debounce is None:
            state.first_seen = now
        else:
            state.debounce.cancel()
        due = min(now + delay, state.first_seen + 4 * delay)
        self._idle.clear()
        state.debounce = self._loop.call_at(due, self._debounce_fired, state)

    def _debounce_fired(self, state: _Session) -> None:
        state.debounce = None
        self._wake(state.key)
        self._forget_if_idle(state)
        if not self._busy and not self._debouncing():
            self._idle.set()

    def _wake(self, key: str) -> None:
        if not self._started or self._stopping:
            return
        state = self._session(key)
        if state.worker is not None:
            state.dirty = True
            return
        if state.debounce is not None:  # the worker claims what the wait was for
            state.debounce.cancel()
            state.debounce = None
        self._idle.clear()
        state.worker = asyncio.get_running_loop().create_task(
            self._worker(state), name=f"session {key}")
        self._busy += 1

    def _wake_later(self, key: str, delay: float) -> None:
        """Deliver and resume ``key`` after ``delay`` s (keeps an earlier timer)."""
        if self._stopping or self._loop is None:
            return
        due = self._loop.time() + delay
        state = self._session(key)
        timer = state.timer
        if timer is not None:
            if timer.when() <= due:
                return
            timer.cancel()
        state.timer = self._loop.call_at(due, self._timer_fired, state)

    def _timer_fired(self, state: _Session) -> None:
        state.timer = None  # a session with a timer is never forgotten: still registered
        state.flush = True
        self._wake(state.key)

    async def _worker(self, state: _Session) -> None:
        key = state.key
        try:
            if not await self._acquire(key):
                # Another live process answers this chat (woken by the stored message's
                # notification): nothing of it is this one's to do.
                state.flush = state.dirty = False
                return
            looked_again = False
            while not self._stopping:
                state.dirty = False
                if state.flush:
                    state.flush = False
                    await self.outbox.flush(key)
                claim = await self.store.claim_next(key, is_command=is_command)
                if claim is None:
                    if state.dirty or state.flush:
                        continue
                    # Give the chat up only when nothing waits; if something arrived
                    # meanwhile, look once more (a reply held for its retry keeps the
                    # chat here until its timer wakes it).
                    if looked_again or await self.coord.idle(key):
                        break
                    looked_again = True
                    continue
                looked_again = False
                if self.coord.process_id is not None and claim.kind is MessageKind.CHAT:
                    # Some may have been stored by another process (no ack there).
                    self.reactions.acknowledge_stored(claim.messages)
                progress = await self._turns.run(claim, override=state.override)
                if progress.requeued:
                    self._wake_later(key, self._worker_restart_s)
                    break
                if progress.lost:
                    self.coord.forget(key)
                    break
                if not claim.more and not state.dirty and not state.flush:
                    # Nothing was left behind this claim and nothing was accepted since
                    # (accept marks the session dirty): skip the empty claim_next, and
                    # give the chat up unless something waits after all.
                    if await self.coord.idle(key):
                        break
                    looked_again = True
        except asyncio.CancelledError:
            raise
        except Lost as exc:
            # Another process holds this chat now (this one was reaped, or a fence said
            # so): what it claimed is requeued and answered there.  If the database
            # still names this process, the sweep wakes the chat again.
            log.info("session %s: %s; this process stops working on it", key, exc)
            self.coord.forget(key)
        except Exception:
            # The store failed; what was claimed stays in the queue.  Try again shortly
            # rather than leaving the chat silent until the next message or restart.
            log.exception("session worker %s stopped; restarting it in %.0f s", key,
                          self._worker_restart_s)
            self._wake_later(key, self._worker_restart_s)
        finally:
            if state.worker is asyncio.current_task():
                state.worker = None
                self._busy -= 1
                self._forget_if_idle(state)
            if not self._busy:
                self._idle.set()

    # -- reporting -----------------------------------------------------------------

    def _emit(self, event: AcceptEvent | TurnEvent) -> None:
        for observer in self._observers:
            try:
                observer(event)
            except Exception:
                log.exception("observer %r failed", observer)
