"""Local-first routing: try each candidate model in order, cool down the ones that fail.

Decisions come from :class:`~bridge.models.base.ErrorClass` alone:

- ``context_overflow`` and ``bad_request`` stop at once (the request itself is at fault;
  the conversation core compacts and retries on ``AllModelsFailed.context_overflow``);
- every other class falls through to the next candidate, and the failed model is cooled
  down for 30 s, then 60 s, then 300 s while it keeps failing (at least as long as a
  ``Retry-After``).  While cooling it is skipped; when the cooldown ends one call probes
  it (claimed before that call's first await, so concurrent turns skip it meanwhile), and
  a success resets it.  ``empty_response`` falls through without a cooldown: the
  server answered, only this reply was empty.
- if every candidate is cooling down, the one whose cooldown ends first is tried anyway
  rather than failing a turn without calling anything.
- a candidate whose provider has reached its spending budget (``budget``, see
  :mod:`bridge.usage.budgets`) is skipped as ``budget_exhausted``, never forced: the cap
  holds even when nothing else answers.

Each attempt carries what the call used (:attr:`Attempt.usage`): the API's own usage
fields, or an estimate marked as such when the server reported none.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

import aiohttp

from bridge.config.resolve import ResolvedModel, UnknownModelError
from bridge.config.schema import Config
from bridge.models.base import (
    AllModelsFailed,
    Attempt,
    Completion,
    ErrorClass,
    ModelError,
    ModelReply,
    RequestSource,
    Router,
    StreamListener,
    Usage,
)
from bridge.models.clients import make_client
from bridge.models.errors import MAX_RETRY_AFTER_S, classify_exception
from bridge.models.http import GuardedListener
from bridge.usage.record import complete_usage

__all__ = ["COOLDOWN_STEPS_S", "BudgetCheck", "ModelRouter", "RequestSource", "Router"]

# A provider id -> why its budget is reached, or None while it may be called.
BudgetCheck = Callable[[str], Awaitable[str | None]]
T = TypeVar("T")

log = logging.getLogger("bridge.models.router")

COOLDOWN_STEPS_S = (30.0, 60.0, 300.0)
_STOP = frozenset({ErrorClass.CONTEXT_OVERFLOW, ErrorClass.BAD_REQUEST})
_NO_COOLDOWN = frozenset({ErrorClass.EMPTY_RESPONSE}) | _STOP


class HealthState(StrEnum):
    """A model's state in :meth:`ModelRouter.status`."""

    OK = "ok"
    COOLING = "cooling"  # failed lately; skipped until its cooldown ends
    PROBE_DUE = "probe-due"  # cooldown over; the next call probes it
    PROBING = "probing"  # a call is testing it now


@dataclass(slots=True)
class _Health:
    failures: int = 0  # consecutive failures
    until: float = 0.0  # cooling down until this clock value
    probing: bool = False  # a call is testing it after its cooldown
    last_error: ErrorClass | None = None
    last_message: str = ""


class ModelRouter(Router):
    """Calls the candidates of a turn in order, with fallback and cooldown."""

    def __init__(
        self,
        config: Callable[[], Config],
        *,
        clock: Callable[[], float] = time.monotonic,
        session: aiohttp.ClientSession | None = None,
        budget: BudgetCheck | None = None,
    ) -> None:
        self._config = config
        self._clock = clock
        self.budget = budget
        self._session = session
        self._owns_session = session is None
        self._health: dict[str, _Health] = {}

    # ------------------------------------------------------------------ lifecycle

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
            self._owns_session = True
        return self._session

    async def aclose(self) -> None:
        """Close the HTTP session if the router created it."""
        if self._owns_session and self._session is not None and not self._session.closed:
            await self._session.close()

    # ------------------------------------------------------------------ routing

    async def complete(
        self,
        candidates: Sequence[ResolvedModel | str],
        request: RequestSource,
        *,
        listener: StreamListener | None = None,
    ) -> ModelReply:
        """Answer ``request`` with the first candidate that succeeds.

        A candidate is a ResolvedModel, or a ref resolved here against the live config
        (one that names no model is recorded as a ``not_found`` attempt).  ``request``
        may be a callable given each candidate's ResolvedModel (to fit its context window
        or vision support); it may be async.  Raises AllModelsFailed listing every
        attempt (skipped ones included).

        ``listener`` hears ``attempt(ref)`` just before each model is really called
        (skipped, cooling and unresolvable candidates are not), then that call's filtered
        text; a model with ``preview: false`` is announced but its client gets no
        listener, so none of its text can reach a preview.
        """
        guarded = GuardedListener.wrap(listener)  # a failing preview never fails the turn

        async def attempt(candidate: ResolvedModel | str
                          ) -> tuple[tuple[Completion, ResolvedModel], Attempt] | Attempt:
            reply_or_error = await self._attempt(candidate, request, guarded)
            if isinstance(reply_or_error, Attempt):
                return reply_or_error
            completion, model, duration, usage = reply_or_error
            return (completion, model), Attempt(model.ref, None, duration, usage=usage)

        (completion, model), attempts = await self._route(candidates, attempt, _STOP)
        return ModelReply(
            text=completion.text, model_ref=model.ref, usage=completion.usage,
            finish_reason=completion.finish_reason, attempts=attempts,
        )

    async def run(
        self,
        candidates: Sequence[ResolvedModel | str],
        call: Callable[[ResolvedModel], Awaitable[T]],
        *,
        stop: frozenset[ErrorClass] = _STOP,
    ) -> tuple[T, str, tuple[Attempt, ...]]:
        """Run ``call`` on the candidates in order, with the cooldowns, probes, budget
        skips and forcing of :meth:`complete`: for model calls that are not chat
        completions (transcription, speech; see :mod:`bridge.voice`).

        ``call`` gets each candidate's ResolvedModel and raises ModelError on failure
        (another exception is classified, as in :meth:`complete`); the classes in
        ``stop`` end the loop.  Returns (value, model ref, attempts); raises
        AllModelsFailed listing every attempt.
        """
        async def attempt(candidate: ResolvedModel | str
                          ) -> tuple[tuple[T, str], Attempt] | Attempt:
            start = self._clock()
            if isinstance(candidate, str):
                try:
                    model = self._config().model(candidate)
                except UnknownModelError as exc:
                    return Attempt(candidate, ErrorClass.NOT_FOUND, 0.0,
                                   f"not configured: {exc}")
            else:
                model = candidate
            try:
                value = await call(model)
            except Exception as exc:
                error = classify_exception(exc, phase="the call")
                if not isinstance(exc, ModelError):
                    log.warning("model %s raised %s; treated as bad_response",
                                model.ref, type(exc).__name__, exc_info=True)
                self._failed(model.ref, error)
                return Attempt(model.ref, error.error_class, self._clock() - start,
                               error.message, usage=error.usage)
            self._health.pop(model.ref, None)
            return (value, model.ref), Attempt(model.ref, None, self._clock() - start)

        (value, ref), attempts = await self._route(candidates, attempt, stop)
        return value, ref, attempts

    async def _route(
        self,
        candidates: Sequence[ResolvedModel | str],
        attempt: Callable[[ResolvedModel | str], Awaitable[tuple[T, Attempt] | Attempt]],
        stop: frozenset[ErrorClass],
    ) -> tuple[T, tuple[Attempt, ...]]:
        """The loop of :meth:`complete` and :meth:`run`: skips, probes, forcing, stop
        classes, the log line; ``attempt`` makes one call (a failed Attempt, or the value
        and its successful Attempt)."""
        by_ref: dict[str, ResolvedModel | str] = {}
        for candidate in candidates:
            by_ref.setdefault(candidate if isinstance(candidate, str) else candidate.ref,
                              candidate)
        refs = list(by_ref)
        if not refs:
            raise ValueError("no candidate models")
        attempts: list[Attempt] = []
        forced = self._forced_candidate(refs)
        try:
            for ref in refs:
                if self.budget is not None:
                    exhausted = await self.budget(_provider(by_ref[ref]))
                    if exhausted is not None:
                        attempts.append(Attempt(ref, ErrorClass.BUDGET_EXHAUSTED, 0.0,
                                                exhausted, skipped=True))
                        continue
                health = self._health.get(ref)
                now = self._clock()
                if health is not None and health.probing:
                    attempts.append(Attempt(ref, health.last_error, 0.0, "being probed",
                                            skipped=True))
                    continue
                if ref != forced and health is not None and health.until > now:
                    attempts.append(Attempt(
                        ref, health.last_error, 0.0,
                        f"cooling down, {health.until - now:.0f}s left", skipped=True,
                    ))
                    continue
                # A model with failures on record is probed by this call alone: claim it
                # now, before any await, so concurrent turns skip it meanwhile.
                probe = health if health is not None and health.failures else None
                if probe is not None:
                    probe.probing = True
                try:
                    outcome = await attempt(by_ref[ref])
                finally:
                    if probe is not None:
                        probe.probing = False
                if isinstance(outcome, Attempt):
                    attempts.append(outcome)
                    if outcome.error_class in stop:
                        break
                    continue
                value, done = outcome
                attempts.append(done)
                self._log(tuple(attempts), answered=ref)
                return value, tuple(attempts)
        except BaseException:
            if attempts:
                self._log(tuple(attempts), answered=None, level=logging.DEBUG)
            raise
        self._log(tuple(attempts), answered=None)
        raise AllModelsFailed(tuple(attempts))

    def _forced_candidate(self, refs: list[str]) -> str | None:
        """When no candidate is free to call: the cooling one whose cooldown ends first.

        A candidate being probed by another turn is never forced (one probe at a time).
        """
        now = self._clock()
        cooling = []
        for index, ref in enumerate(refs):
            health = self._health.get(ref)
            if health is None or (health.until <= now and not health.probing):
                return None
            if not health.probing:
                cooling.append((health.until, index, ref))
        return min(cooling)[2] if cooling else None  # ties: candidate order

    async def _attempt(
        self, candidate: ResolvedModel | str, request: RequestSource,
        listener: StreamListener | None = None,
    ) -> tuple[Completion, ResolvedModel, float, Usage] | Attempt:
        """One call; returns (Completion, ResolvedModel, duration, usage) or a failed
        Attempt (with the usage its server reported, if any)."""
        start = self._clock()
        if isinstance(candidate, str):
            ref = candidate
            try:
                model = self._config().model(ref)
            except UnknownModelError as exc:
                return Attempt(ref, ErrorClass.NOT_FOUND, 0.0, f"not configured: {exc}")
        else:
            model, ref = candidate, candidate.ref
        try:
            if callable(request):
                made = request(model)
                built = await made if inspect.isawaitable(made) else made
            else:
                built = request
        except ModelError as exc:  # the caller could not build a prompt for this model
            return Attempt(ref, exc.error_class, self._clock() - start, exc.message)
        try:
            client = make_client(model, self._get_session())
            if listener is not None:
                listener.attempt(ref)
            completion = await client.complete(
                built, listener=listener if model.preview else None)
        except Exception as exc:
            error = classify_exception(exc, phase="the call")
            if not isinstance(exc, ModelError):
                log.warning("model %s raised %s; treated as bad_response",
                            ref, type(exc).__name__, exc_info=True)
            duration = self._clock() - start
            self._failed(ref, error)
            return Attempt(ref, error.error_class, duration, error.message, usage=error.usage)
        self._health.pop(ref, None)
        usage = complete_usage(completion.usage, built, completion.text)
        return completion, model, self._clock() - start, usage

    def _failed(self, ref: str, error: ModelError) -> None:
        health = self._health.setdefault(ref, _Health())
        health.last_error = error.error_class
        health.last_message = error.message
        if error.error_class in _NO_COOLDOWN:
            return
        step = COOLDOWN_STEPS_S[min(health.failures, len(COOLDOWN_STEPS_S) - 1)]
        health.failures += 1
        if error.retry_after is not None:
            step = max(step, min(error.retry_after, MAX_RETRY_AFTER_S))
        health.until = self._clock() + step

    # ------------------------------------------------------------------ reporting

    def status(self) -> dict[str, dict[str, Any]]:
        """Per model ref with a failure on record: state, cooldown left, last error."""
        now = self._clock()
        out: dict[str, dict[str, Any]] = {}
        for ref, health in self._health.items():
            if health.probing:
                state = HealthState.PROBING
            elif health.until > now:
                state = HealthState.COOLING
            elif health.failures:
                state = HealthState.PROBE_DUE
            else:
                state = HealthState.OK
            out[ref] = {
                "state": state,
                "failures": health.failures,
                "cooldown_remaining_s": round(max(health.until - now, 0.0), 1),
                "last_error": health.last_error.value if health.last_error else None,
                "last_message": health.last_message,
            }
        return out

    def _log(self, attempts: tuple[Attempt, ...], *, answered: str | None,
             level: int | None = None) -> None:
        """One line per call: DEBUG when the first candidate answered with no failed or
        skipped attempt (the core's per-turn INFO line already says it all), INFO when a
        fallback answered, WARNING when every candidate failed."""
        if level is None:
            if not answered:
                level = logging.WARNING
            elif len(attempts) == 1:
                level = logging.DEBUG
            else:
                level = logging.INFO
        if not log.isEnabledFor(level):
            return
        described = ", ".join(
            f"{a.model_ref}={_outcome(a)} {a.duration_s * 1000:.0f}ms" for a in attempts
        )
        log.log(
            level, "model turn answered=%s attempts=[%s]", answered or "none", described,
            extra={"event": "model_turn", "answered": answered, "attempts": [
                {"model": a.model_ref, "error": a.error_class.value if a.error_class else None,
                 "ms": round(a.duration_s * 1000), "skipped": a.skipped} for a in attempts
            ]},
        )


def _provider(candidate: ResolvedModel | str) -> str:
    if isinstance(candidate, ResolvedModel):
        return candidate.provider
    return candidate.partition("/")[0]


def _outcome(attempt: Attempt) -> str:
    if attempt.skipped:
        return f"skipped({attempt.error_class or 'cooling'})"
    return str(attempt.error_class or "ok")
