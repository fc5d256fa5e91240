"""One turn: the answer to one claim of a session's queue.

A turn is a command (answered by :mod:`bridge.commands`) or a model call: choose and
resolve the candidates (once), read the history within the largest candidate's prompt
budget, compact it first when the primary's context window cannot hold it, call the
router, and on a context overflow compact and retry once.  The reply — or an apology when
every model failed, or an internal-error note when the turn itself broke — is stored with
the turn (``Store.finish_turn``) and handed to the outbox.  A turn that cannot even be
recorded goes back to the queue.  Every turn ends with one log line and a
:class:`TurnEvent`.

While the model writes, a :class:`~bridge.live.LiveReply` may show the answer as it
streams (``streaming``: a draft or an edited message); it is finished before the reply is
stored, so nothing of it is sent after the final.  The model phase (waiting for a slot,
compaction, the model call) runs as a child task in :class:`~bridge.live.ActiveTurns`, so
``/stop`` at the door cancels just that: the turn then ends failed, reason ``stopped``,
with no reply of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from bridge.commands import (
    CommandContext,
    CommandServices,
    choose_models,
    parse_command,
    run_command,
)
from bridge.config.resolve import (
    ResolvedModel,
    UnknownModelError,
    chat_setting,
    group_context_for,
    resolve_candidates,
    streaming_for,
)
from bridge.envelope import ChatAddress, ChatKind, VoiceClip
from bridge.live import ActiveTurns, LiveReply, NoReactions, TurnReactions, typing_unless_drafting
from bridge.models.base import (
    AllModelsFailed,
    Attempt,
    ModelReply,
    ModelRequest,
    RequestSource,
    StreamListener,
    Usage,
)
from bridge.ports import PreviewMode
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
from bridge.store import Claim, MessageKind, Store, StoredMessage
from bridge.store.coord import Lost
from bridge.store.records import STOPPED_REASON, HistoryTurn, HistoryWindow, SessionRecord
from bridge.usage.record import call_rows, recorder_for
from bridge.voice.wiring import asked_by_voice

if TYPE_CHECKING:
    from bridge.config.schema import Config
    from bridge.delivery import Outbox
    from bridge.media import MediaStore
    from bridge.models.base import Router
    from bridge.ports import Channel
    from bridge.voice.service import Transcription
    from bridge.voice.wiring import VoiceService

# The per-turn line keeps the logger name it always had (operators filter on it).
log = logging.getLogger("bridge.conversation")

APOLOGY = "The model is unavailable right now — please try again shortly."
INTERNAL_ERROR = "Something went wrong on my side — please try again shortly."


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


@dataclass(slots=True)
class Progress:
    """How far a turn got, for the scheduler."""

    finished: bool = False  # finish_turn stored the reply (the claim is closed)
    requeued: bool = False  # the claim went back to the queue; pause the worker
    lost: bool = False  # the chat was taken over: no reply stored, stop


class TurnSlots:
    """At most ``maxConcurrentTurns`` model turns at once, across every chat."""

    def __init__(self) -> None:
        self._slots: asyncio.Semaphore | None = None
        self._limit = 0

    def slot(self, limit: int) -> contextlib.AbstractAsyncContextManager[Any]:
        """A place among ``limit`` model turns (0: unlimited)."""
        if limit <= 0:
            return contextlib.nullcontext()
        if self._slots is None or self._limit != limit:
            # A reload changes the limit: turns holding the old semaphore release it.
            self._slots = asyncio.Semaphore(limit)
            self._limit = limit
        return self._slots


@dataclass(slots=True)
class TurnRunner:
    """What every turn needs from the conversation core; one per core.

    ``route(address)`` is the attached channel serving a chat (for typing);
    ``answered(n)`` is told when ``n`` inbound messages stop being pending.
    """

    store: Store
    config: Callable[[], Config]
    router: Router
    media: MediaStore | None
    prompt_cache: PromptCache
    outbox: Outbox
    route: Callable[[ChatAddress], Channel | None]
    emit: Callable[[TurnEvent], None]
    answered: Callable[[int], None]
    slots: TurnSlots = field(default_factory=TurnSlots)
    # Voice notes: transcripts in the prompt, echoTranscript, spoken replies (None: off).
    voice: VoiceService | None = None
    # What owner commands may use of the running process (the config file, tell).
    commands: CommandServices = field(default_factory=CommandServices)
    # The model phases running now, by session key (what /stop cancels).
    active: ActiveTurns = field(default_factory=ActiveTurns)
    # The ack reactions, told when a turn fails or is stopped.
    reactions: TurnReactions = field(default_factory=NoReactions)

    async def run(self, claim: Claim, *, override: str | None = None) -> Progress:
        """Answer ``claim`` (``override``: the session's model override, if any)."""
        return await Turn(self, claim, override).run()


class Turn:
    """One claim being answered; holds what its steps share."""

    def __init__(self, runner: TurnRunner, claim: Claim, override: str | None) -> None:
        self.runner = runner
        self.store = runner.store
        self.claim = claim
        self.override = override
        self.config = runner.config()
        self.started = time.monotonic()
        self.progress = Progress()
        last = claim.messages[-1]
        self.group = last.address.chat_kind is ChatKind.GROUP
        # Filled in by a chat turn:
        self.candidates: list[ResolvedModel | str] = []  # resolved once, primary first
        self.models: list[ResolvedModel] = []  # the candidates that resolve
        self.instructions: str | None = None
        self.session: SessionRecord | None = None
        self.history: list[HistoryTurn] = []
        # The group's unaddressed messages since the last answer (groupContextMessages).
        self.context: list[StoredMessage] = []
        self.current: Sequence[StoredMessage] = claim.messages  # voice notes annotated
        self.heard: list[Transcription] = []  # this turn's voice notes
        self.built: dict[str, BuiltPrompt] = {}  # by model ref, for this history
        self.compacted = False
        self.live: LiveReply | None = None  # the answer's preview while it streams

    async def run(self) -> Progress:
        """Answer the claim; contain any failure as an internal-error reply."""
        claim = self.claim
        try:
            if claim.kind is MessageKind.COMMAND:
                await self._command()
            else:
                await self._chat()
        except asyncio.CancelledError:
            if self.live is not None:
                # Shutdown: the stored preview stays, the next start removes it.
                self.live.abandon()
            raise
        except Lost as exc:  # bridge.store.coord: TurnTakenOver, or a fence in the outbox
            # Another process answers these messages (this one was reaped): store nothing,
            # apologise for nothing.  A reply already stored stays pending, and the new
            # owner's flush sends it (from the first chunk not recorded).
            log.info("turn %d of %s dropped: %s", claim.turn_id, claim.session_key, exc)
            self.progress.lost = True
            if self.live is not None:
                self.live.abandon()
            return self.progress
        except Exception as exc:
            log.exception("turn %d of %s failed unexpectedly", claim.turn_id, claim.session_key)
            if self.progress.finished:
                # The reply is stored (pending); a failure after that (e.g. marking it
                # delivered) must not answer the turn a second time.
                return self.progress
            await self._end_live()
            self.runner.reactions.failed(claim.messages)
            try:
                out = await self._finish(
                    reply=INTERNAL_ERROR, answered=False,
                    reason=f"internal error: {type(exc).__name__}",
                    reply_kind=MessageKind.APOLOGY, reply_to_message_id=self._quote_id())
            except Exception:
                log.exception("turn %d of %s could not be recorded; its messages go back to "
                              "the queue", claim.turn_id, claim.session_key)
                if self.live is not None:
                    await self.live.discard()  # no reply of this turn will finish it
                await self._requeue()
                return self.progress
            delivered = await self.runner.outbox.deliver(out)
            self._emit(answered=False, delivered=delivered, reason="internal error",
                       reply=out.text)
        return self.progress

    # -- commands ----------------------------------------------------------------

    async def _command(self) -> None:
        claim = self.claim
        msg = claim.messages[0]
        parsed = parse_command(msg.text)
        assert parsed is not None
        name, arg = parsed
        ctx = CommandContext(config=self.config, store=self.store, message=msg,
                             override=self.override, services=self.runner.commands)
        reply = await run_command(ctx, name, arg)
        out = await self._finish(reply=reply, reply_kind=MessageKind.COMMAND,
                                 reply_to_message_id=self._quote_id())
        delivered = await self.runner.outbox.deliver(out)
        log.info("command session=%s turn=%d /%s duration=%.3fs", claim.session_key,
                 claim.turn_id, name, time.monotonic() - self.started)
        self._emit(answered=True, delivered=delivered, reply=reply)

    # -- chat turns ----------------------------------------------------------------

    async def _chat(self) -> None:
        config, claim = self.config, self.claim
        last = claim.messages[-1]
        a = last.address
        choice = await choose_models(config, self.store, last, override=self.override)
        if not choice.candidates:
            await self._fail(AllModelsFailed(()), "no model is configured")
            return
        self.candidates = resolve_candidates(config, choice.candidates)
        self.models = [c for c in self.candidates if isinstance(c, ResolvedModel)]
        read_budget = max((prompt_budget(m) for m in self.models), default=None)
        session, window = await self.store.session_with_history(
            claim.session_id, token_budget=read_budget, estimate=estimate_tokens)
        self.session, self.history = session, window.turns
        if self.group:
            wanted = group_context_for(config, a.channel, a.chat_id, a.thread_id)
            if wanted > 0:
                self.context = await self.store.group_context(
                    claim.session_key, before_id=claim.messages[0].id, limit=wanted)
        self.instructions = config.system_prompt_for(
            a.channel, chat_kind=a.chat_kind.value, chat_id=a.chat_id,
            sender_id=last.sender_id, thread_id=a.thread_id)
        channel = self.runner.route(a)
        self.live = self._open_live(channel, a)
        phase = self.runner.active.run(claim.session_key, claim.turn_id,
                                       self._model_phase(channel, a, window, read_budget))
        try:
            reply, failure, earlier, model_duration = await phase
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # shutdown (run() leaves the preview for the next start)
            await self._stopped()  # /stop cancelled only the model phase
            return

        if reply is None:
            assert failure is not None
            await self._fail(failure, None, model_duration=model_duration, earlier=earlier)
            return
        built_for_reply = self.built.get(reply.model_ref)
        window_size = next(
            (m.context_window for m in self.models if m.ref == reply.model_ref), None)
        echo = self.runner.voice.echo(self.heard) if self.runner.voice is not None else ""
        await self._end_live()
        out = await self._finish(
            reply=echo + reply.text, model_ref=reply.model_ref, usage=reply.usage,
            attempts=reply.attempts, reply_to_message_id=self._quote_id(),
            prompt_tokens_estimate=built_for_reply.prompt_tokens if built_for_reply else None,
            context_window=window_size, context_ids=[m.id for m in self.context])
        delivered = await self.runner.outbox.deliver(out, voice=await self._spoken(reply.text))
        self._log(reply.model_ref, reply.attempts, model_duration, answered=True,
                  delivered=delivered, reply=reply.text, compacted=self.compacted)
        self._emit(answered=True, delivered=delivered, model_ref=reply.model_ref,
                   attempts=reply.attempts, model_duration=model_duration, reply=reply.text,
                   compacted=self.compacted)

    async def _model_phase(self, channel: Channel | None, a: ChatAddress,
                           window: HistoryWindow, read_budget: int | None,
                           ) -> tuple[ModelReply | None, AllModelsFailed | None,
                                      tuple[Attempt, ...], float]:
        """Wait for a slot, compact when needed, ask the models (and on a context overflow
        compact and ask once more): ``(reply, failure, earlier attempts, duration)``.
        What ``/stop`` cancels."""
        config, claim = self.config, self.claim
        compaction = config.agents.defaults.compaction
        reply: ModelReply | None = None
        failure: AllModelsFailed | None = None
        earlier: tuple[Attempt, ...] = ()
        model_started = time.monotonic()
        typing = typing_unless_drafting(channel, a, self.live)
        async with typing, self.runner.slots.slot(config.agents.defaults.maxConcurrentTurns):
            await self._hear()
            model_started = time.monotonic()
            first = self.candidates[0]
            primary = first if isinstance(first, ResolvedModel) else None
            # Proactive compaction: the primary's window cannot hold the whole history.
            if compaction.enabled and primary is not None and (self.history
                                                               or window.left_out):
                built = await self._build(primary)
                through = None
                if built.omitted_turn_ids or window.left_out:
                    through = plan_compaction(
                        built, keep_recent=compaction.keepRecentTurns,
                        summary_tokens=summary_token_cap(primary), left_out=window.left_out)
                if through is not None and await self._compact(
                        through, left_out=window.left_out, read_budget=read_budget):
                    self.compacted = True  # the prompt is built again from the summary
                else:
                    self.built[primary.ref] = built
            try:
                reply = await self._complete()
            except AllModelsFailed as exc:
                failure = exc
                if exc.context_overflow and compaction.enabled and self.history:
                    log.info("context overflow in %s: compacting and retrying once",
                             claim.session_key)
                    if await self._compact(self.history[-1].turn_id):
                        self.built.clear()
                        self.compacted = True
                        earlier = exc.attempts
                        try:
                            reply = await self._complete()
                            failure = None
                        except AllModelsFailed as exc2:
                            failure = exc2
            return reply, failure, earlier, time.monotonic() - model_started

    def _open_live(self, channel: Channel | None, a: ChatAddress) -> LiveReply | None:
        """The answer's live preview, when the chat streams (``streaming``), the channel
        can show that mode here and the primary model's text may be shown early."""
        if channel is None:
            return None
        last = self.claim.messages[-1]
        where: dict[str, Any] = {"chat_kind": a.chat_kind.value, "chat_id": a.chat_id,
                                 "sender_id": last.sender_id, "thread_id": a.thread_id}
        mode = streaming_for(self.config, a.channel, **where)
        if mode == PreviewMode.OFF.value:
            return None
        first = self.candidates[0] if self.candidates else None
        if isinstance(first, ResolvedModel) and not first.preview:
            return None
        interval_ms = chat_setting(self.config, a.channel, "streamingIntervalMs", **where)
        try:
            return LiveReply.open(
                channel, a, PreviewMode(mode), turn_id=self.claim.turn_id, store=self.store,
                reply_to=self._quote_id(),
                interval=(interval_ms if interval_ms is not None else 1000) / 1000)
        except Exception:  # a preview is never worth a turn
            log.exception("turn %d: no live preview", self.claim.turn_id)
            return None

    async def _end_live(self) -> None:
        """No more preview updates: the reply is about to be stored and delivered."""
        if self.live is not None:
            await self.live.finish()

    async def _stopped(self) -> None:
        """``/stop`` cancelled the model phase: close the turn with no reply (failed,
        reason ``stopped``, so a restart never answers it again), then remove the
        preview.  In that order: "Stopped." is already stored, and removing a preview
        can take seconds; a crash meanwhile must not leave the turn to be answered
        after the restart (a preview left behind is removed at the next start)."""
        claim = self.claim
        await self.store.stop_turn(claim.turn_id, reason=STOPPED_REASON)
        if self.live is not None:
            await self.live.discard()
        self._closed()
        self.runner.reactions.clear(claim.messages)
        after = time.monotonic() - self.started
        log.info("turn stopped session=%s turn=%d after=%.1fs", claim.session_key,
                 claim.turn_id, after,
                 extra={"session": claim.session_key, "turn": claim.turn_id,
                        "outcome": "stopped", "duration_ms": round(after * 1000, 1)})
        self._emit(answered=False, delivered=False, reason=STOPPED_REASON)

    async def _hear(self) -> None:
        """Transcribe this turn's voice notes (stored ones are read back) and show every
        voice note of the window with its transcript."""
        voice = self.runner.voice
        if voice is None:
            return
        self.heard = await voice.transcribe_messages(self.claim.messages)
        self.history, self.current = await voice.annotate(self.history, self.claim.messages)

    async def _spoken(self, text: str) -> VoiceClip | None:
        """The reply spoken (``replyWithVoice``), or None: the text goes alone."""
        voice = self.runner.voice
        if voice is None:
            return None
        try:
            return await voice.speak(text, asked_by_voice=asked_by_voice(self.claim.messages))
        except asyncio.CancelledError:
            raise
        except Exception:  # never lose the reply because its voice failed
            log.exception("turn %d: speech failed; the reply goes as text", self.claim.turn_id)
            return None

    async def _build(self, model: ResolvedModel) -> BuiltPrompt:
        """The prompt for ``model`` from the turn's current summary and history."""
        assert self.session is not None
        return await build_request(
            model=model, instructions=self.instructions, summary=self.session.summary,
            history=self.history, current=self.current, context=self.context,
            group=self.group, media_store=self.runner.media,
            settings=self.config.agents.defaults, cache=self.runner.prompt_cache)

    async def _complete(self) -> ModelReply:
        """Ask the router; an empty answer counts as every model failing."""
        async def request_for(model: ResolvedModel) -> ModelRequest:
            built = self.built.get(model.ref)
            if built is None:
                built = self.built[model.ref] = await self._build(model)
            return built.request

        reply = await self._routed(self.candidates, request_for, "reply", listener=self.live)
        if not reply.text.strip():
            raise AllModelsFailed(reply.attempts)
        return reply

    async def _routed(self, candidates: list[ResolvedModel | str],
                      request: RequestSource, purpose: Literal["reply", "compaction"],
                      *, listener: StreamListener | None = None) -> ModelReply:
        """``router.complete``, and what its calls used recorded against this chat
        (``listener``: the live preview, for the reply only; a summary is never shown)."""
        router = self.runner.router
        try:
            if listener is None:
                reply = await router.complete(candidates, request)
            else:
                reply = await router.complete(candidates, request, listener=listener)
        except AllModelsFailed as exc:
            await self._record_usage(exc.attempts, purpose, None)
            raise
        await self._record_usage(reply.attempts, purpose, reply.usage)
        return reply

    async def _record_usage(self, attempts: tuple[Attempt, ...],
                            purpose: Literal["reply", "compaction"],
                            answer_usage: Usage | None) -> None:
        """Store the usage rows of one router call; a store that cannot take them costs
        the rows (logged), never the turn."""
        rows = call_rows(self.config, attempts, message=self.claim.messages[-1],
                         turn_id=self.claim.turn_id, purpose=purpose,
                         answer_usage=answer_usage)
        if not rows:
            return
        try:
            await recorder_for(self.store).record(rows)
        except Exception as exc:
            log.warning("usage of turn %d of %s not recorded: %s", self.claim.turn_id,
                        self.claim.session_key, exc)

    async def _compact(self, through: int, *, left_out: int = 0,
                       read_budget: int | None = None) -> bool:
        """Summarise the turns up to ``through`` (with the previous summary) and store it;
        on success the turn continues from the new session and the history after
        ``through``.  False: nothing to summarise, or compaction failed."""
        session, history = self.session, self.history
        assert session is not None
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
            return False
        compaction = self.config.agents.defaults.compaction
        candidates = list(self.candidates)
        first = candidates[0]
        cap = summary_token_cap(first) if isinstance(first, ResolvedModel) else 1024
        if compaction.model:
            try:
                ref = self.config.resolve_ref(compaction.model)
            except UnknownModelError as exc:
                log.warning("compaction.model does not resolve (%s); using the session's", exc)
            else:
                chosen = resolve_candidates(self.config, [ref])[0]
                candidates = [chosen, *[c for c in candidates if _ref(c) != ref]]

        def request_for(model: ResolvedModel) -> ModelRequest:
            return compaction_request(model, session.summary, older, group=self.group,
                                      summary_tokens=cap)

        started = time.monotonic()
        try:
            reply = await self._routed(candidates, request_for, "compaction")
        except AllModelsFailed as exc:
            log.warning("compaction of %s failed: %s", session.session_key, exc)
            return False
        summary = truncate_to_tokens(reply.text.strip(), cap)
        if not summary:
            return False
        await self.store.save_summary(session.id, summary, through)
        log.info("compacted session=%s turns=%d model=%s duration=%.2fs", session.session_key,
                 len(older) + left_out, reply.model_ref, time.monotonic() - started)
        new_session = await self.store.session(session.id)
        assert new_session is not None
        self.session = new_session
        self.history = [t for t in history if t.turn_id > through]
        return True

    async def _fail(self, exc: AllModelsFailed, reason: str | None, *,
                    model_duration: float = 0.0, earlier: tuple[Attempt, ...] = ()) -> None:
        """Answer with the apology; the turn is recorded as failed, with every attempt."""
        attempts = (*earlier, *exc.attempts)
        reason = reason or str(AllModelsFailed(attempts))
        await self._end_live()
        self.runner.reactions.failed(self.claim.messages)
        out = await self._finish(
            reply=APOLOGY, answered=False, reason=reason[:1000],
            reply_kind=MessageKind.APOLOGY, attempts=attempts,
            reply_to_message_id=self._quote_id())
        delivered = await self.runner.outbox.deliver(out)
        self._log(None, attempts, model_duration, answered=False, delivered=delivered,
                  reason=reason, config=self.runner.config())
        self._emit(answered=False, delivered=delivered, attempts=attempts,
                   model_duration=model_duration, reason=reason, reply=out.text)

    # -- recording -----------------------------------------------------------------

    async def _finish(self, **kwargs: Any) -> StoredMessage:
        """``store.finish_turn`` — and the claim's messages stop counting as pending."""
        out = await self.store.finish_turn(self.claim.turn_id, **kwargs)
        self._closed()
        return out

    def _closed(self) -> None:
        """The claim is closed: its messages stop counting as pending."""
        self.progress.finished = True
        self.runner.answered(len(self.claim.messages))

    async def _requeue(self) -> None:
        self.progress.requeued = True
        try:
            await self.store.requeue_turn(self.claim.turn_id)
        except Exception:
            log.exception("turn %d of %s stays processing until the next start",
                          self.claim.turn_id, self.claim.session_key)

    def _quote_id(self) -> str | None:
        """In groups the reply quotes the (last) triggering message."""
        last = self.claim.messages[-1]
        if last.address.chat_kind is ChatKind.GROUP:
            return last.platform_message_id
        return None

    def _emit(self, *, answered: bool, delivered: bool, model_ref: str | None = None,
              attempts: tuple[Attempt, ...] = (), model_duration: float = 0.0,
              reason: str | None = None, reply: str = "", compacted: bool = False) -> None:
        claim = self.claim
        self.runner.emit(TurnEvent(
            session_key=claim.session_key, turn_id=claim.turn_id, kind=claim.kind.value,
            answered=answered, message_ids=tuple(m.id for m in claim.messages),
            platform_message_ids=tuple(m.platform_message_id or "" for m in claim.messages),
            model_ref=model_ref, attempts=attempts,
            duration_s=time.monotonic() - self.started, model_duration_s=model_duration,
            delivered=delivered, reason=reason, compacted=compacted, reply=reply))

    def _log(self, model_ref: str | None, attempts: tuple[Attempt, ...],
             model_duration: float, *, answered: bool, delivered: bool,
             reason: str | None = None, reply: str = "", compacted: bool = False,
             config: Config | None = None) -> None:
        """One line per turn: session, model that answered, attempts, durations."""
        claim = self.claim
        config = config or self.config
        tried = ",".join(
            f"{at.model_ref}:{_tried(at)}:{round(at.duration_s * 1000)}" for at in attempts)
        outcome = "answered" if answered else "failed"
        total = time.monotonic() - self.started
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


def _tried(attempt: Attempt) -> str:
    """How one attempt went, for the turn's log line."""
    if attempt.skipped:
        # A provider past its budget is said so; a cooling model is just "skipped".
        return "budget_exhausted" if attempt.error_class == "budget_exhausted" else "skipped"
    return str(attempt.error_class or "ok")


def _ref(candidate: ResolvedModel | str) -> str:
    return candidate if isinstance(candidate, str) else candidate.ref
