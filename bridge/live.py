"""Live replies (issue 17): what a chat sees while its answer is being written, and /stop.

- :class:`LiveReply` is the preview policy, once for every channel: the model clients
  tell it the *filtered* answer text as it streams (it is their ``StreamListener``), and
  it decides what a preview may show and when.  The channel only offers the primitives
  (:class:`bridge.ports.Preview`: a Telegram draft or an editable message).
- :class:`ActiveTurns` is the /stop registry: the door cancels a session's *model phase*
  (compaction and the model call), never the worker nor a delivery in progress.
- :class:`TurnReactions` is what a turn tells the ack reactions on its terminal paths
  (implemented in ``bridge/reactions.py``; the default does nothing).
- :func:`discard_stale_previews` removes, at start-up, the edit-mode previews an earlier
  process left behind (a crash mid-answer); with peers on the store,
  :func:`discard_interrupted_previews` removes those of a process that was reaped (the
  reaper, right after the reap; any process at its start), before the messages are
  answered again.

What a preview shows is always a prefix of the final reply, never more:

- only text the reasoning filter has released (what the final reply is joined from), so
  no reasoning, not even for a moment;
- never the trailing partial word: a secret or a bot token arriving split across deltas
  is shown whole or not at all, and everything shown goes through ``redact_configured``
  (as the final does in the outbox);
- plain text, the Markdown as typed: it only grows, so it cannot flicker, and cannot be
  refused for its markup.

And it never competes with the final reply: at most one update per interval, only when
the channel has send budget to spare (``may_preview_now``), identical text is never sent
twice, the first refusal (429, gone, answer lost) ends previews for the turn, and
:meth:`LiveReply.finish` waits for the update in flight (never cancels it: a cancelled
request may still land after the final) and sends nothing after.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from bridge.envelope import ChatAddress, ChatKind
from bridge.formatting import chunk_text
from bridge.ports import (
    PreviewError,
    PreviewGone,
    PreviewKey,
    PreviewMaybeSent,
    PreviewMode,
    PreviewRateLimited,
)
from bridge.secrets import redact_configured
from bridge.store.deliveries import StalePreview
from bridge.store.sql import Body, In, all_

if TYPE_CHECKING:
    from bridge.ports import Channel, Preview
    from bridge.store import Store
    from bridge.store.records import StoredMessage

log = logging.getLogger(__name__)

T = TypeVar("T")
# Deletions of previews whose last edit came too late (kept referenced until done).
_RETIRING: set[asyncio.Task[None]] = set()


@dataclass(slots=True)
class _Running:
    turn_id: int
    task: asyncio.Task[Any]


class ActiveTurns:
    """The model phase running in each session, so ``/stop`` can cancel it.

    The entry exists only while the phase runs: once the reply is stored, ``stop`` says
    nothing is running and a delivery in progress is never cut.
    """

    def __init__(self) -> None:
        self._running: dict[str, _Running] = {}

    async def run(self, key: str, turn_id: int, coro: Awaitable[T]) -> T:
        """Run ``coro`` as a child task under ``key`` and return its result.

        A ``stop(key)`` cancels only the child: the caller sees ``CancelledError`` while
        its own task is not being cancelled (``asyncio.current_task().cancelling()`` is
        0), which is how it tells /stop from shutdown.  Cancelling the caller cancels the
        child too (and waits for it to unwind)."""
        task: asyncio.Task[T] = asyncio.ensure_future(coro)
        entry = _Running(turn_id, task)
        self._running[key] = entry
        try:
            # Awaiting a task directly: cancelling the caller cancels the child and
            # resumes the caller once the child has unwound.
            return await task
        finally:
            if self._running.get(key) is entry:
                del self._running[key]

    def stop(self, key: str) -> bool:
        """Cancel the model phase running under ``key``; False when none is."""
        entry = self._running.get(key)
        if entry is None or entry.task.done():
            return False
        entry.task.cancel("stop")
        return True

    def running(self, key: str) -> int | None:
        """The turn id whose model phase runs under ``key``, or None."""
        entry = self._running.get(key)
        if entry is None or entry.task.done():
            return None
        return entry.turn_id


class TurnReactions(Protocol):
    """A turn's terminal paths, as the ack reactions need them (synchronous: the
    implementation spawns its own side tasks and never blocks a turn)."""

    def failed(self, messages: Sequence[StoredMessage]) -> None:
        """Every model failed for these messages: show the failure mark."""
        ...

    def clear(self, messages: Sequence[StoredMessage]) -> None:
        """These messages will get no reply (e.g. /stop): remove the ack reaction."""
        ...


class NoReactions:
    """The default :class:`TurnReactions`: nothing to show."""

    def failed(self, messages: Sequence[StoredMessage]) -> None:
        return None

    def clear(self, messages: Sequence[StoredMessage]) -> None:
        return None


# -- the preview ----------------------------------------------------------------------


class Clock(Protocol):
    """Time for :class:`LiveReply` (tests drive a virtual one)."""

    def now(self) -> float:
        """Seconds, monotonic."""
        ...

    async def wait(self, event: asyncio.Event, seconds: float | None) -> None:
        """Return when ``event`` is set or ``seconds`` have passed (None: no limit)."""
        ...


class LoopClock:
    """The event loop's monotonic clock."""

    def now(self) -> float:
        return time.monotonic()

    async def wait(self, event: asyncio.Event, seconds: float | None) -> None:
        # asyncio.timeout: Python 3.11's wait_for can swallow a cancel (gh-86296), and
        # finish() cancels the loop that waits here.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await event.wait()


def _utf16(text: str) -> int:
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def _complete_words(raw: str) -> str:
    """``raw`` up to its last whitespace (the trailing partial word held back), without
    trailing whitespace."""
    i = len(raw)
    while i > 0 and not raw[i - 1].isspace():
        i -= 1
    return raw[:i].rstrip()


class LiveReply:
    """The live preview of one chat turn's answer: a ``StreamListener`` and its update loop.

    The listener side (``attempt``, ``thinking``, ``text``) is synchronous and only
    updates state and wakes the loop, so a slow platform never slows down reading the
    model's stream.  The loop renders the text and sends it through the channel's
    :class:`~bridge.ports.Preview`:

    - the first text goes out as soon as there is a whole word (edit mode: once it has
      ``EDIT_MIN_FIRST_CHARS`` or ``EDIT_FIRST_WAIT_S`` after the first word, so the
      notification carries more than a word), then at most one update per ``interval``;
      pieces arriving meanwhile are coalesced into the next one;
    - draft mode: an empty draft (the platform's "Thinking…") after ``placeholder_delay``
      (the delay typing uses: a quick answer shows neither), and the draft re-sent every
      ``DRAFT_REFRESH_S`` while nothing changes (drafts vanish after about 30 s); over the
      chunk limit, the last chunk under a new draft, after ``"…\n"``;
    - edit mode: the text plus ``" …"`` (still being written; a message left by a crash
      looks unfinished, and the final edit always differs); over the chunk limit the
      first chunk, then no more updates (the final edit completes it);
    - ``attempt()`` after text was shown (a fallback model takes over) starts again, at
      once: a new draft, or the same message edited back to "…" (either straight to the
      fallback's text when it already has some); two half-answers are never visible.
    """

    DRAFT_REFRESH_S = 20.0
    FINISH_WAIT_S = 5.0
    EDIT_MIN_FIRST_CHARS = 30
    EDIT_FIRST_WAIT_S = 1.5
    GROUP_EDIT_MIN_INTERVAL_S = 3.5
    DRAFT_MIN_INTERVAL_S = 0.25
    EDIT_MIN_INTERVAL_S = 1.0
    BUSY_RETRY_S = 0.25  # the channel had no budget to spare: look again after this
    EDIT_MARK = " …"
    ROLL_MARK = "…\n"

    def __init__(self, preview: Preview, *, turn_id: int, address: ChatAddress,
                 channel: Channel, store: Store | None = None, interval: float = 1.0,
                 placeholder_delay: float = 1.0, chunk_limit: int = 4000,
                 clock: Clock | None = None) -> None:
        self.preview = preview
        self.mode = preview.mode
        self.turn_id = turn_id
        self.address = address
        self._channel = channel
        self._store = store
        floor = self.DRAFT_MIN_INTERVAL_S if self.mode is PreviewMode.DRAFT else (
            self.GROUP_EDIT_MIN_INTERVAL_S if address.chat_kind is ChatKind.GROUP
            else self.EDIT_MIN_INTERVAL_S)
        self.interval = max(interval, floor)
        self.placeholder_delay = placeholder_delay
        self.chunk_limit = max(chunk_limit, 100)
        self._clock: Clock = clock or LoopClock()
        # Listener state.
        self._raw: list[str] = []
        self._attempt = 0
        self._first_word_at: float | None = None
        # What the screen shows (None: nothing sent yet).
        self._shown: str | None = None
        self._shown_attempt = 0
        self._shown_segment = 0
        self._shown_text = False  # the shown text holds answer text (not a placeholder)
        self._frozen = False
        self._last_sent = 0.0
        self._busy_until = 0.0
        self._started_at = self._clock.now()
        # The loop.
        self._wake = asyncio.Event()
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._inflight: asyncio.Future[None] | None = None
        self.updates = 0  # preview calls made (for the turn's log line)
        self.ended = asyncio.Event()  # previews ended early (refused, failed): typing again
        self.end_reason: str | None = None

    @classmethod
    def open(cls, channel: Channel, address: ChatAddress, mode: PreviewMode, *,
             turn_id: int, store: Store, reply_to: str | None = None,
             interval: float = 1.0, clock: Clock | None = None) -> LiveReply | None:
        """A started preview of turn ``turn_id`` in ``address``, or None when the channel
        cannot show ``mode`` there now.  Edit mode stores the preview message's id as
        soon as it exists (``store.save_preview``), before any further update."""
        if mode is PreviewMode.OFF or mode not in channel.capabilities.preview_modes:
            return None

        async def created(key: PreviewKey) -> None:
            await store.save_preview(turn_id, address, key)

        preview = channel.preview(address, mode, turn_id=turn_id, reply_to=reply_to,
                                  on_created=created)
        if preview is None:
            return None
        live = cls(preview, turn_id=turn_id, address=address, channel=channel, store=store,
                   interval=interval,
                   placeholder_delay=float(getattr(channel, "typing_delay", 1.0)),
                   chunk_limit=channel.capabilities.text_chunk_limit, clock=clock)
        live.start()
        return live

    # -- StreamListener ---------------------------------------------------------------

    def attempt(self, model_ref: str) -> None:
        """A candidate is being called: its answer starts from nothing."""
        del model_ref
        self._attempt += 1
        self._raw.clear()
        self._first_word_at = None
        self._wake.set()

    def thinking(self) -> None:
        """Nothing showable yet (the placeholder covers it)."""
        return None

    def text(self, piece: str) -> None:
        if not piece or self._closed:
            return
        self._raw.append(piece)
        if self._first_word_at is None and any(ch.isspace() for ch in piece):
            self._first_word_at = self._clock.now()
        self._wake.set()

    # -- life cycle ---------------------------------------------------------------------

    @property
    def showing(self) -> bool:
        """Previews are still on for this turn (not finished, not ended by a refusal)."""
        return not self._closed

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"live-reply-{self.turn_id}")

    async def finish(self) -> None:
        """Stop previewing before the final reply goes out: wait (up to ``FINISH_WAIT_S``)
        for an update in flight, never cancelling it, and send nothing after."""
        self._closed = True
        self._wake.set()
        inflight = self._inflight
        if inflight is not None and not inflight.done():
            done, _ = await asyncio.wait({inflight}, timeout=self.FINISH_WAIT_S)
            if not done:
                log.warning("turn %d: a preview update is still in flight after %gs; the "
                            "reply goes out anyway", self.turn_id, self.FINISH_WAIT_S)
                if self.mode is PreviewMode.EDIT:
                    await self._retire(inflight)
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task})

    async def _retire(self, inflight: asyncio.Future[Any]) -> None:
        """An edit still in flight could land after the reply's own edit of the same
        message and overwrite it: the reply goes as a new message instead (the stored
        preview is forgotten), and the preview is deleted once that edit has landed."""
        if self._store is not None:
            try:
                await self._store.drop_preview(self.turn_id)
            except Exception as exc:
                log.warning("turn %d: the preview's record stays: %s", self.turn_id, exc)
                return  # the reply still edits it; nothing better is possible

        async def delete_when_landed() -> None:
            await asyncio.wait({inflight})
            try:
                await self.preview.delete()
            except Exception as exc:
                log.warning("turn %d: the late preview could not be removed: %s",
                            self.turn_id, exc)

        task = asyncio.create_task(delete_when_landed(), name=f"live-retire-{self.turn_id}")
        _RETIRING.add(task)
        task.add_done_callback(_RETIRING.discard)

    async def discard(self) -> None:
        """:meth:`finish`, and remove the preview: no reply follows it (``/stop``).  Edit
        mode deletes the message and its stored row (a failed delete keeps the row, so the
        next start tries again); a draft vanishes on its own."""
        await self.finish()
        if self.mode is not PreviewMode.EDIT:
            return
        try:
            await self.preview.delete()
        except Exception as exc:
            log.warning("turn %d: the preview could not be removed: %s", self.turn_id, exc)
            return
        if self._store is not None:
            try:
                await self._store.drop_preview(self.turn_id)
            except Exception as exc:
                log.warning("turn %d: the preview's record stays: %s", self.turn_id, exc)

    def abandon(self) -> None:
        """Stop the loop without cleaning up (shutdown: the stored preview stays, so the
        next start removes it as after a crash)."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()

    # -- the loop -------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while not self._closed:
                self._wake.clear()
                plan = self._plan()
                if plan is None:
                    await self._clock.wait(self._wake, None)
                    continue
                at, text, restart, segment, frozen = plan
                now = self._clock.now()
                if at > now:
                    await self._clock.wait(self._wake, at - now)
                    continue
                if not self._channel.may_preview_now(self.address):
                    self._busy_until = now + self.BUSY_RETRY_S
                    continue
                await self._send(text, restart, segment, frozen)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("turn %d: the live preview failed; no more previews for it",
                          self.turn_id)
            self._end("internal error")

    def _render(self) -> tuple[str, int, bool]:
        """``(text to show, segment, frozen)`` for the current answer; ``""``: nothing
        showable yet.  ``segment`` changes when a draft rolls over to a new chunk."""
        shown = redact_configured(_complete_words("".join(self._raw)))
        if not shown:
            return "", 0, False
        if self.mode is PreviewMode.DRAFT:
            if _utf16(shown) <= self.chunk_limit:
                return shown, 0, False
            chunks = chunk_text(shown, self.chunk_limit - len(self.ROLL_MARK))
            return self.ROLL_MARK + chunks[-1], len(chunks) - 1, False
        if _utf16(shown) + len(self.EDIT_MARK) <= self.chunk_limit:
            return shown + self.EDIT_MARK, 0, False
        first = chunk_text(shown, self.chunk_limit - len(self.EDIT_MARK))[0]
        return first + self.EDIT_MARK, 0, True

    def _plan(self) -> tuple[float, str, bool, int, bool] | None:
        """The next update: ``(when, text, restart, segment, frozen)``, or None (wait
        for something to show)."""
        text, segment, frozen = self._render()
        step = self._step(text, segment)
        if step is None:
            return None
        at, shown, restart = step
        return at, shown, restart, segment, frozen and shown == text

    def _step(self, text: str, segment: int) -> tuple[float, str, bool] | None:
        draft = self.mode is PreviewMode.DRAFT
        busy = self._busy_until
        if self._shown is None:  # nothing on screen yet
            if text:
                if draft or len(text) - len(self.EDIT_MARK) >= self.EDIT_MIN_FIRST_CHARS:
                    return busy, text, False
                first = self._first_word_at if self._first_word_at is not None else 0.0
                return max(busy, first + self.EDIT_FIRST_WAIT_S), text, False
            if draft:
                return max(busy, self._started_at + self.placeholder_delay), "", False
            return None
        if self._shown_text and self._shown_attempt != self._attempt:
            # A fallback took over: start again from nothing (the new answer's text too,
            # if it already has some).
            return busy, text, True
        if draft and segment != self._shown_segment:
            return max(busy, self._last_sent + self.interval), text, True
        if self._frozen:
            return None
        if text == self._shown or (not text and not draft):
            if draft:  # keep the draft alive
                return max(busy, self._last_sent + self.DRAFT_REFRESH_S), self._shown, False
            return None
        if not self._shown_text:  # the placeholder is up: the first words at once
            return busy, text, False
        return max(busy, self._last_sent + self.interval), text, False

    async def _send(self, text: str, restart: bool, segment: int, frozen: bool) -> None:
        attempt = self._attempt
        self._last_sent = self._clock.now()
        self.updates += 1
        inflight = asyncio.ensure_future(self.preview.update(text, restart=restart))
        inflight.add_done_callback(_retrieve)
        self._inflight = inflight
        try:
            await asyncio.shield(inflight)
        except PreviewRateLimited as exc:
            self._end(f"rate limited (retry after {exc.retry_after:g}s)")
            return
        except PreviewMaybeSent as exc:
            log.warning("turn %d: a preview update may have been sent without an answer "
                        "(%s); no more previews for this turn", self.turn_id, exc)
            self._end("answer lost")
            return
        except PreviewGone as exc:
            self._end(f"gone: {exc}")
            return
        except PreviewError as exc:
            self._end(str(exc))
            return
        self._shown = text
        self._shown_attempt = attempt
        self._shown_segment = segment
        self._shown_text = bool(text)
        self._frozen = frozen

    def _end(self, reason: str) -> None:
        """Previews end for this turn (the reply is unaffected)."""
        if self._closed:
            return
        self._closed = True
        self.end_reason = reason
        log.info("turn %d: live preview off: %s", self.turn_id, reason)
        self.ended.set()


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark an update's failure as seen (the loop, or nobody after finish, handles it)."""
    if not future.cancelled():
        future.exception()


@contextlib.asynccontextmanager
async def typing_unless_drafting(channel: Channel | None, address: ChatAddress,
                                 live: LiveReply | None) -> AsyncIterator[None]:
    """The channel's typing indicator for a turn, except while a draft preview shows
    (its "Thinking…" draft is the indicator); typing starts when the draft preview ends
    early (refused, rate limited)."""
    if channel is None:
        yield
        return
    if live is None or live.mode is not PreviewMode.DRAFT:
        async with channel.typing(address):
            yield
        return
    stop = asyncio.Event()

    async def after_drafts() -> None:
        ended = asyncio.ensure_future(live.ended.wait())
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({ended, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ended.cancel()
            stopped.cancel()
        if stop.is_set():
            return
        async with channel.typing(address):
            await stop.wait()

    task = asyncio.create_task(after_drafts(), name="typing-after-drafts")
    try:
        yield
    finally:
        stop.set()
        # Leaving typing() waits (bounded) for its request in flight; never cancelled.
        await asyncio.wait({task})


async def discard_stale_previews(store: Store, channels: Iterable[Channel]) -> int:
    """Remove the previews an earlier process left (a crash mid-answer, a stop before the
    delete went through): each of an attached channel is discarded, then forgotten.
    Returns how many; failures are logged (the row stays for the next start), never
    raised.  Alone on the store only: a peer's turn may be finishing into its preview."""
    by_pair = {(c.name, c.account): c for c in channels}
    try:
        stale = await store.stale_previews(by_pair)
    except Exception:
        log.exception("stale previews could not be read")
        return 0
    removed = await _discard(store, by_pair, stale)
    if removed:
        log.info("removed %d preview(s) left by an earlier run", removed)
    return removed


async def discard_interrupted_previews(store: Store, channels: Iterable[Channel],
                                       turn_ids: Iterable[int] | None = None) -> int:
    """With peers on the store: remove the previews of interrupted turns (``turn_ids``,
    or all of the attached channels) — those of a process that died mid-answer, whose
    messages another process answers again (a reaped turn never finishes: its finish is
    fenced).  A preview of a turn that is running, or that ended any other way, is left
    to its own process.  Returns how many were removed; failures are logged."""
    by_pair = {(c.name, c.account): c for c in channels}
    ids = None if turn_ids is None else tuple(turn_ids)
    if not by_pair or ids == ():
        return 0
    try:
        left = await store.read_with(_interrupted_previews(list(by_pair), ids))
    except Exception:
        log.exception("previews of interrupted turns could not be read")
        return 0
    removed = await _discard(store, by_pair, left)
    if removed:
        log.info("removed %d preview(s) of turns interrupted with their process", removed)
    return removed


async def _discard(store: Store, by_pair: dict[tuple[str, str], Channel],
                   rows: Iterable[StalePreview]) -> int:
    removed = 0
    for row in rows:
        channel = by_pair.get((row.address.channel, row.address.account))
        if channel is None or not channel.owns(row.address):
            continue
        try:
            await channel.discard_preview(row.address, row.key)
            await store.drop_preview(row.turn_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("the preview of turn %d in %s %s stays: %s", row.turn_id,
                        row.address.channel, row.address.chat_id, exc)
            continue
        removed += 1
    return removed


def _interrupted_previews(pairs: list[tuple[str, str]], turn_ids: tuple[int, ...] | None
                          ) -> Body[list[StalePreview]]:
    where = " OR ".join("(p.channel = ? AND p.account = ?)" for _ in pairs)
    params: list[Any] = [part for pair in pairs for part in pair]
    sql = ("SELECT p.* FROM reply_previews p JOIN turns t ON t.id = p.turn_id"
           f" WHERE ({where}) AND t.status = 'interrupted'")
    if turn_ids is not None:
        sql += " AND p.turn_id IN ?"
        params.append(In(turn_ids))
    rows = yield all_(sql + " ORDER BY p.turn_id", *params)
    return [StalePreview(
        turn_id=r["turn_id"],
        address=ChatAddress(r["channel"], r["account"], r["chat_id"],
                            ChatKind(r["chat_kind"]), r["thread_id"]),
        key=PreviewKey(PreviewMode(r["mode"]), r["platform_id"])) for r in rows]
