"""Prometheus metrics for one running App, in its own registry.

The composition root creates one :class:`Metrics` and hands it to the core, the router and
the health server; nothing uses prometheus_client's global registry, so tests and several
Apps in one process never collide.  Call sites (all cheap, never raise)::

    metrics.message_received("telegram")               # an Inbound reached the core
    metrics.message_refused("telegram", "not_allowed") # access policy / gating said no
    metrics.message_answered("telegram")               # the reply was delivered
    metrics.turn_finished("answered", 1.84, reply=reply)             # ModelReply
    metrics.turn_finished("failed", 30.2, attempts=exc.attempts)     # AllModelsFailed
    metrics.set_pending_source(lambda: core.pending_count())         # read at scrape time
    metrics.usage_recorded(rows)                       # UsageRows of model calls
    metrics.limit_refused("messagesPerHour")           # a message refused by a limit

``metrics.render()`` gives the Prometheus text exposition, ``metrics.content_type`` its
HTTP content type.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator
from enum import StrEnum
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Metric,
    generate_latest,
)

if TYPE_CHECKING:
    from bridge.models.base import Attempt, ModelReply
    from bridge.store.usage import UsageRow

log = logging.getLogger(__name__)

__all__ = ["Metrics", "TurnOutcome"]


class TurnOutcome(StrEnum):
    """The ``outcome`` label of ``palaver_turns_total`` (the label accepts any string;
    keep to these)."""

    ANSWERED = "answered"  # a model replied and the reply was stored
    FAILED = "failed"  # every candidate model failed (AllModelsFailed)
    COMMAND = "command"  # a /command was handled without a model call
    ERROR = "error"  # an unexpected exception in the turn
    CANCELLED = "cancelled"  # shutdown or /new interrupted the turn


# error_class label values beyond bridge.models.base.ErrorClass
OK = "ok"  # the attempt answered
SKIPPED = "skipped"  # the model was cooling down and was not called
OTHER = "other"  # the model label of any ref that is not configured
BUDGET_EXHAUSTED = "budget_exhausted"  # skipped: its provider's budget is reached

# The ``kind`` label of palaver_tokens_total, and the ``limit`` label of
# palaver_limit_refusals_total: fixed sets.
TOKEN_KINDS = ("input", "output", "reasoning", "cached", "cache_write")
LIMIT_KINDS = ("messagesPerMinute", "messagesPerHour", "tokensPerDay", "costPerDayUsd",
               "costPerMonthUsd")

# Turns wait on models: from a few ms (cached, tiny local model) to minutes (cold load).
_TURN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300)
_MODEL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300)


class Metrics:
    """Palaver's counters, histograms and the pending gauge, in a private registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.messages_received = Counter(
            "palaver_messages_received", "Inbound messages that reached the core.",
            ["channel"], registry=r,
        )
        self.messages_refused = Counter(
            "palaver_messages_refused", "Inbound messages refused (access, gating, limits).",
            ["channel", "reason"], registry=r,
        )
        self.messages_answered = Counter(
            "palaver_messages_answered", "Replies delivered to a chat.",
            ["channel"], registry=r,
        )
        self.turns = Counter(
            "palaver_turns", "Conversation turns by outcome.", ["outcome"], registry=r,
        )
        self.model_attempts = Counter(
            "palaver_model_attempts",
            'Model calls by model and error class ("ok" when the model answered, '
            '"skipped" when it was cooling down).',
            ["model", "error_class"], registry=r,
        )
        self.fallbacks = Counter(
            "palaver_fallbacks", "Times a turn moved on from one model to the next.",
            ["from_model", "to_model"], registry=r,
        )
        self.turn_duration = Histogram(
            "palaver_turn_duration_seconds", "Time from picking a message up to the reply.",
            buckets=_TURN_BUCKETS, registry=r,
        )
        self.model_latency = Histogram(
            "palaver_model_latency_seconds", "Duration of one model call (any outcome).",
            ["model"], buckets=_MODEL_BUCKETS, registry=r,
        )
        self.tokens = Counter(
            "palaver_tokens", "Tokens used by model calls, by model and kind (input, output,"
            " reasoning and cached are parts of input/output; estimates included).",
            ["model", "kind"], registry=r,
        )
        self.cost = Counter(
            "palaver_cost_usd", "What model calls cost, in USD (from each model's cost).",
            ["provider", "model"], registry=r,
        )
        self.limit_refusals = Counter(
            "palaver_limit_refusals", "Inbound messages refused because a limit was reached.",
            ["limit"], registry=r,
        )
        self.pending_messages = Gauge(
            "palaver_pending_messages", "Stored inbound messages not yet answered.",
            registry=r,
        )
        self._pending_source: Callable[[], float] | None = None
        self._model_source: Callable[[], Iterable[str]] | None = None
        self._pending_value = 0.0
        self.pending_messages.set_function(self._read_pending)

    # -- messages -----------------------------------------------------------------

    def message_received(self, channel: str) -> None:
        """One inbound message from ``channel`` reached the core."""
        self.messages_received.labels(channel=channel).inc()

    def message_refused(self, channel: str, reason: str) -> None:
        """One inbound message refused; ``reason`` is a short fixed word (not_allowed, ...)."""
        self.messages_refused.labels(channel=channel, reason=reason).inc()

    def message_answered(self, channel: str) -> None:
        """One reply delivered to a chat on ``channel``."""
        self.messages_answered.labels(channel=channel).inc()

    # -- turns and models ---------------------------------------------------------

    def turn_finished(
        self,
        outcome: str,
        duration_s: float,
        reply: ModelReply | None = None,
        attempts: Iterable[Attempt] = (),
    ) -> None:
        """Record a finished turn and its model attempts.

        ``reply`` (a ModelReply) supplies the attempts when given; otherwise pass
        ``attempts`` (e.g. ``AllModelsFailed.attempts``).  Each attempt counts in
        model_attempts_total and model_latency_seconds; each change of model between
        consecutive attempts counts as a fallback.
        """
        self.turns.labels(outcome=outcome).inc()
        if duration_s >= 0 and math.isfinite(duration_s):
            self.turn_duration.observe(duration_s)
        self.record_attempts(reply.attempts if reply is not None else tuple(attempts))

    def set_model_source(self, source: Callable[[], Iterable[str]] | None) -> None:
        """Name only the models ``source()`` returns (the configured refs) in labels.

        Any other model ref (a typo'd /model, a ref a provider echoed) is labelled
        ``other``, so label values stay a small set an operator chose.  ``None`` (the
        default) names every ref.
        """
        self._model_source = source

    def _model_label(self, ref: str, known: frozenset[str] | None) -> str:
        if known is None or ref in known:
            return ref
        return OTHER

    def _known_models(self) -> frozenset[str] | None:
        source = self._model_source
        if source is None:
            return None
        try:
            return frozenset(source())
        except Exception:
            log.debug("model source failed", exc_info=True)
            return frozenset()

    def record_attempts(self, attempts: Iterable[Attempt]) -> None:
        """Count model attempts and fallbacks (turn_finished calls this)."""
        previous: str | None = None
        known = self._known_models()
        for raw in attempts:
            attempt = raw
            model = self._model_label(attempt.model_ref, known)
            if attempt.skipped:
                error_class = (BUDGET_EXHAUSTED if attempt.error_class == BUDGET_EXHAUSTED
                               else SKIPPED)
            elif attempt.error_class is None:
                error_class = OK
            else:
                error_class = str(attempt.error_class)
            self.model_attempts.labels(model=model, error_class=error_class).inc()
            if not attempt.skipped and attempt.duration_s >= 0:
                self.model_latency.labels(model=model).observe(attempt.duration_s)
            if previous is not None and previous != model:
                self.fallbacks.labels(from_model=previous, to_model=model).inc()
            previous = model

    # -- usage and limits ---------------------------------------------------------

    def usage_recorded(self, rows: Iterable[UsageRow]) -> None:
        """Count the tokens and cost of recorded model calls."""
        known = self._known_models()
        for row in rows:
            model = self._model_label(row.model_ref, known)
            provider = row.provider if model != OTHER else OTHER
            for kind, count in (("input", row.input_tokens), ("output", row.output_tokens),
                                ("reasoning", row.reasoning_tokens),
                                ("cached", row.cached_tokens),
                                ("cache_write", row.cache_write_tokens)):
                if count > 0:
                    self.tokens.labels(model=model, kind=kind).inc(count)
            if row.cost_usd > 0 and math.isfinite(row.cost_usd):
                self.cost.labels(provider=provider, model=model).inc(row.cost_usd)

    def limit_refused(self, limit: str) -> None:
        """One message refused by ``limit`` (a LimitValues field name)."""
        self.limit_refusals.labels(limit=limit if limit in LIMIT_KINDS else OTHER).inc()

    # -- pending ------------------------------------------------------------------

    def set_pending_source(self, source: Callable[[], float] | None) -> None:
        """Read the pending-messages gauge from ``source()`` at every scrape.

        ``source`` must be cheap and synchronous (an in-memory count); if it raises, the
        gauge reads NaN for that scrape and the error is logged at debug.  ``None``
        returns to the value given to :meth:`set_pending`.
        """
        self._pending_source = source

    def set_pending(self, count: float) -> None:
        """Set the pending-messages gauge directly (used when no source is set)."""
        self._pending_value = float(count)

    def _read_pending(self) -> float:
        source = self._pending_source
        if source is None:
            return self._pending_value
        try:
            return float(source())
        except Exception:
            log.debug("pending-messages source failed", exc_info=True)
            return math.nan

    # -- exposition ---------------------------------------------------------------

    @property
    def content_type(self) -> str:
        """The HTTP Content-Type of :meth:`render`'s output."""
        return CONTENT_TYPE_LATEST

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric in this registry."""
        return generate_latest(_WithoutCreated(self.registry))


class _WithoutCreated:
    """A view of a registry without the ``*_created`` series.

    prometheus_client adds a creation-timestamp gauge beside every counter and histogram;
    Prometheus' text format does not need them and they double the series count.  The
    library's switch for this is process-wide, hence this local filter.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        for family in self._registry.collect():
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family
