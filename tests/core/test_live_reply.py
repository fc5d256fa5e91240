"""LiveReply: what a streaming answer's preview shows, and when (issue 17).

A fake Preview records every update; a virtual clock moves only when a test says so, so
"at most one update per interval" is checked by counting calls, never by timing.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.envelope import ChatAddress, ChatKind
from bridge.live import ActiveTurns, LiveReply, discard_stale_previews
from bridge.models.reasoning import ReasoningFilter, strip_reasoning
from bridge.ports import (
    Capabilities,
    Markup,
    PreviewGone,
    PreviewKey,
    PreviewMaybeSent,
    PreviewMode,
    PreviewRateLimited,
    SendError,
)
from bridge.secrets import REDACTED, redact_configured

DM = ChatAddress("telegram", "default", "42", ChatKind.DIRECT)
GROUP = ChatAddress("telegram", "default", "-100", ChatKind.GROUP)
TOKEN = "7000001:AA" + "b" * 33  # a bot-token shape: redacted in replies


class Clock:
    """Virtual time: ``advance`` moves it and wakes the waits that are due."""

    def __init__(self) -> None:
        self.t = 0.0
        self._waits: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self.t

    async def wait(self, event: asyncio.Event, seconds: float | None) -> None:
        if event.is_set():
            return
        due = asyncio.get_running_loop().create_future()
        entry = (self.t + seconds if seconds is not None else float("inf"), due)
        self._waits.append(entry)
        woken = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait({due, woken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
            self._waits.remove(entry)

    async def advance(self, seconds: float) -> None:
        """Move time in small steps, letting the loop run at each."""
        end = self.t + seconds
        while True:
            await settle()
            due = [at for at, _ in self._waits if at <= end]
            if not due:
                break
            self.t = max(self.t, min(due))
            for at, fut in list(self._waits):
                if at <= self.t and not fut.done():
                    fut.set_result(None)
        self.t = end
        await settle()


async def settle(rounds: int = 20) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


@dataclass
class FakePreview:
    """A Preview recording ``(text, restart)``; ``fail`` raises on the next update,
    ``gate`` (when set) holds an update until it is opened."""

    mode: PreviewMode = PreviewMode.DRAFT
    updates: list[tuple[str, bool]] = field(default_factory=list)
    fail: Exception | None = None
    gate: asyncio.Event | None = None
    deleted: int = 0
    delete_error: Exception | None = None
    in_flight: int = 0
    cancelled: bool = False

    async def update(self, text: str, *, restart: bool = False) -> None:
        self.in_flight += 1
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.fail is not None:
                raise self.fail
            self.updates.append((text, restart))
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        finally:
            self.in_flight -= 1

    async def delete(self) -> None:
        if self.delete_error is not None:
            raise self.delete_error
        self.deleted += 1

    @property
    def texts(self) -> list[str]:
        return [t for t, _ in self.updates]


class FakeChannel:
    """What LiveReply uses of a Channel: the budget check."""

    name = "telegram"
    account = "default"

    def __init__(self) -> None:
        self.capabilities = Capabilities(4000, Markup.PLAIN,
                                         preview_modes=frozenset(PreviewMode))
        self.budget = True
        self.asked = 0

    def may_preview_now(self, address: ChatAddress) -> bool:
        self.asked += 1
        return self.budget


class FakeStore:
    def __init__(self) -> None:
        self.dropped: list[int] = []

    async def drop_preview(self, turn_id: int) -> None:
        self.dropped.append(turn_id)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make(clock: Clock, *, mode: PreviewMode = PreviewMode.DRAFT, address: ChatAddress = DM,
         interval: float = 1.0, chunk_limit: int = 4000, **preview_kw):
    preview = FakePreview(mode=mode, **preview_kw)
    channel = FakeChannel()
    store = FakeStore()
    live = LiveReply(preview, turn_id=7, address=address, channel=channel,  # type: ignore[arg-type]
                     store=store, interval=interval, placeholder_delay=1.0,  # type: ignore[arg-type]
                     chunk_limit=chunk_limit, clock=clock)
    live.start()
    return live, preview, channel, store


# -- throttle, coalescing, dedupe --------------------------------------------------------


async def test_the_first_words_go_at_once_then_one_update_per_interval(clock):
    live, preview, _, _ = make(clock)
    live.attempt("local/small")
    live.text("Hello ")
    await settle()
    assert preview.texts == ["Hello"]  # no interval waited for the first word
    for word in "there my dear old friend how are you ".split(" "):
        live.text(word + " ")
    await clock.advance(0.9)
    assert preview.texts == ["Hello"]  # still inside the interval
    await clock.advance(0.1)
    # Ten pieces, one update, with the latest text (coalesced).
    assert preview.texts == ["Hello", "Hello there my dear old friend how are you"]
    await live.finish()


async def test_the_trailing_partial_word_is_held_and_identical_text_is_not_sent_again(clock):
    live, preview, _, _ = make(clock)
    live.text("One two")
    await settle()
    assert preview.texts == ["One"]  # "two" may still grow
    live.text("th")
    live.text("ree")
    await clock.advance(5)
    assert preview.texts == ["One"]  # the render did not change: no call (dedupe)
    live.text(" ")
    await clock.advance(1)
    assert preview.texts == ["One", "One twothree"]
    await live.finish()


async def test_no_update_without_send_budget_until_there_is_some(clock):
    live, preview, channel, _ = make(clock)
    channel.budget = False
    live.text("Hello world ")
    await clock.advance(3)
    assert preview.updates == [] and channel.asked >= 2
    channel.budget = True
    await clock.advance(0.5)
    assert preview.texts == ["Hello world"]
    await live.finish()


# -- the draft placeholder and its keep-alive -----------------------------------------


async def test_thinking_placeholder_after_the_typing_delay_and_kept_alive(clock):
    live, preview, _, _ = make(clock)
    live.attempt("local/small")
    live.thinking()
    await clock.advance(0.9)
    assert preview.updates == []  # a quick answer would show nothing
    await clock.advance(0.2)
    assert preview.updates == [("", False)]  # "Thinking…"
    # A 60 s cold load: re-sent every 20 s (a draft lives about 30 s).
    await clock.advance(60)
    assert preview.updates == [("", False)] * 4  # at 1, 21, 41 and 61 s
    live.text("Paris is ")
    await settle()
    assert preview.texts[-1] == "Paris is" and preview.updates[-1][1] is False
    await live.finish()


async def test_a_draft_showing_text_is_refreshed_while_the_model_stalls(clock):
    live, preview, _, _ = make(clock)
    live.text("Working on it ")
    await settle()
    await clock.advance(45)
    assert preview.texts == ["Working on it"] * 3  # at 0, 20 and 40 s
    await live.finish()


async def test_edit_mode_shows_no_placeholder_and_marks_the_text_unfinished(clock):
    live, preview, _, _ = make(clock, mode=PreviewMode.EDIT)
    await clock.advance(30)
    assert preview.updates == []  # typing shows instead; no "…" message of nothing
    live.text("A short start ")
    await clock.advance(1.4)
    assert preview.updates == []  # the first message waits for more text, up to 1.5 s
    await clock.advance(0.2)
    assert preview.texts == ["A short start …"]
    live.text("and a lot more text than thirty characters ")
    await clock.advance(1)
    assert preview.texts[-1] == "A short start and a lot more text than thirty characters …"
    await live.finish()


async def test_edit_mode_sends_at_once_when_the_first_text_is_long_enough(clock):
    live, preview, _, _ = make(clock, mode=PreviewMode.EDIT)
    live.text("This first sentence is longer than thirty characters. ")
    await settle()
    assert preview.texts == ["This first sentence is longer than thirty characters. …"]
    await live.finish()


async def test_edit_mode_in_a_group_waits_at_least_three_and_a_half_seconds(clock):
    live, preview, _, _ = make(clock, mode=PreviewMode.EDIT, address=GROUP, interval=1.0)
    assert live.interval == LiveReply.GROUP_EDIT_MIN_INTERVAL_S
    live.text("This first sentence is longer than thirty characters. ")
    await settle()
    live.text("More ")
    await clock.advance(3.4)
    assert len(preview.updates) == 1
    await clock.advance(0.1)
    assert len(preview.updates) == 2
    await live.finish()


# -- finish, discard, shutdown -----------------------------------------------------------


async def test_finish_waits_for_the_update_in_flight_and_sends_nothing_after(clock):
    gate = asyncio.Event()
    live, preview, _, _ = make(clock, gate=gate)
    live.text("Hello world ")
    await settle()
    assert preview.in_flight == 1
    finishing = asyncio.create_task(live.finish())
    await settle()
    assert not finishing.done()  # waits for the request, never cancels it
    live.text("and more words ")
    gate.set()
    await asyncio.wait_for(finishing, 5)
    assert preview.texts == ["Hello world"] and not preview.cancelled
    await clock.advance(30)
    assert preview.texts == ["Hello world"]  # nothing after finish (no keep-alive either)


async def test_finish_gives_up_waiting_after_a_bound_but_never_cancels(clock):
    gate = asyncio.Event()
    live, preview, _, _ = make(clock, gate=gate)
    live.FINISH_WAIT_S = 0.05  # real time: the bound itself
    live.text("Hello world ")
    await settle()
    await asyncio.wait_for(live.finish(), 5)
    assert preview.in_flight == 1 and not preview.cancelled
    gate.set()
    await settle()
    assert preview.texts == ["Hello world"]


async def test_an_edit_still_in_flight_at_the_end_is_not_the_reply(clock):
    """The reply's own edit of that message could be overwritten by the late preview
    edit: the reply goes as a new message (the record is dropped) and the preview is
    deleted once its edit has landed."""
    gate = asyncio.Event()
    live, preview, _, store = make(clock, mode=PreviewMode.EDIT, gate=gate)
    live.FINISH_WAIT_S = 0.05  # real time: the bound itself
    live.text("This first sentence is longer than thirty characters. ")
    await settle()
    assert preview.in_flight == 1
    await asyncio.wait_for(live.finish(), 5)
    assert store.dropped == [7] and preview.deleted == 0  # not while it may still land
    gate.set()
    for _ in range(20):
        await settle()
    assert preview.texts and preview.deleted == 1 and not preview.cancelled


async def test_an_edit_that_lands_in_time_stays_the_reply(clock):
    live, preview, _, store = make(clock, mode=PreviewMode.EDIT)
    live.text("This first sentence is longer than thirty characters. ")
    await settle()
    await live.finish()
    assert store.dropped == [] and preview.deleted == 0


async def test_discard_deletes_an_edit_preview_and_forgets_it(clock):
    live, preview, _, store = make(clock, mode=PreviewMode.EDIT)
    live.text("This first sentence is longer than thirty characters. ")
    await settle()
    await live.discard()
    assert preview.deleted == 1 and store.dropped == [7]


async def test_a_preview_that_cannot_be_deleted_stays_on_record(clock):
    live, preview, _, store = make(clock, mode=PreviewMode.EDIT,
                                   delete_error=SendError("network down", retryable=True))
    live.text("This first sentence is longer than thirty characters. ")
    await settle()
    await live.discard()
    assert store.dropped == []  # the next start tries again


async def test_discard_of_a_draft_deletes_nothing(clock):
    live, preview, _, store = make(clock)
    live.text("Hello world ")
    await settle()
    await live.discard()
    assert preview.deleted == 0 and store.dropped == []


async def test_shutdown_leaves_the_preview_and_its_record(clock):
    live, preview, _, store = make(clock, mode=PreviewMode.EDIT)
    live.text("This first sentence is longer than thirty characters. ")
    await settle()
    live.abandon()
    await settle()
    live.text("more text after the stop ")
    await clock.advance(10)
    assert preview.deleted == 0 and store.dropped == [] and len(preview.updates) == 1


# -- fallback, refusals -------------------------------------------------------------------


async def test_a_fallback_after_shown_text_starts_a_new_draft(clock):
    live, preview, _, _ = make(clock)
    live.attempt("local/small")
    live.text("The first model says ")
    await settle()
    live.attempt("backup/m")  # the stream broke; the fallback starts from nothing
    await settle()
    assert preview.updates[-1] == ("", True)  # a new draft, "Thinking…"
    live.text("Backup answer ")
    await settle()
    assert preview.updates[-1] == ("Backup answer", False)
    assert all("first model" not in t for t, _ in preview.updates[-2:])
    await live.finish()


async def test_a_fallback_in_edit_mode_edits_the_same_message_back(clock):
    live, preview, _, _ = make(clock, mode=PreviewMode.EDIT)
    live.attempt("local/small")
    live.text("The first model says something long enough. ")
    await settle()
    live.attempt("backup/m")
    await settle()
    assert preview.updates[-1] == ("", True)  # the channel shows "…"
    live.text("Backup answer ")
    await settle()
    assert preview.texts[-1] == "Backup answer …"
    await live.finish()


async def test_a_fallback_before_anything_was_shown_restarts_nothing(clock):
    live, preview, _, _ = make(clock)
    live.attempt("local/small")
    live.text("never")  # no whole word yet
    live.attempt("backup/m")
    live.text("Backup answer ")
    await settle()
    assert preview.updates == [("Backup answer", False)]
    await live.finish()


@pytest.mark.parametrize("error", [PreviewRateLimited(3.0), PreviewGone("chat refused drafts"),
                                   PreviewMaybeSent("timed out")],
                         ids=["429", "gone", "maybe-sent"])
async def test_the_first_refusal_ends_previews_for_the_turn(clock, error):
    live, preview, _, _ = make(clock, fail=error)
    live.text("Hello world ")
    await settle()
    assert live.ended.is_set() and not live.showing
    preview.fail = None
    live.text("more words come ")
    await clock.advance(60)
    assert preview.updates == []  # not even a keep-alive
    await live.finish()


# -- long answers --------------------------------------------------------------------------


async def test_a_draft_over_the_chunk_limit_rolls_to_a_new_draft_with_the_last_chunk(clock):
    live, preview, _, _ = make(clock, chunk_limit=100)
    live.text("word " * 15)  # 74 characters shown
    await settle()
    live.text("more " * 10)
    await clock.advance(1)
    text, restart = preview.updates[-1]
    assert restart and text.startswith("…\n") and len(text) <= 100
    assert ("word " * 15 + "more " * 10).strip().endswith(text[2:])
    live.text("tail ")
    await clock.advance(1)
    assert preview.updates[-1][1] is False  # the same (new) draft grows
    await live.finish()


async def test_edit_mode_over_the_chunk_limit_shows_the_first_chunk_then_stops(clock):
    live, preview, _, _ = make(clock, mode=PreviewMode.EDIT, chunk_limit=100)
    live.text("word " * 30)
    await settle()
    text = preview.texts[-1]
    assert text.endswith(" …") and len(text) <= 100 and ("word " * 30).startswith(text[:-2])
    live.text("more " * 30)
    await clock.advance(10)
    assert preview.texts == [text]  # frozen: the final edit completes it
    await live.finish()


# -- what may be shown: property over random chunkings ----------------------------------

REASONING_CASES = [
    ("<think>I should not be seen</think>The answer is forty two, surely. ", "should"),
    # A lone closing tag arriving late: nothing may show until it is known.
    ("Let me think it over and consider. </think>Paris is the capital. ", "consider"),
    ("Hello <think>secret musing</think> world and more words here. ", "secret"),
    ("Example: `</think>` is a tag in code, as you see here. ", None),
    (f"Your token is {TOKEN} as you asked, keep it safe. ", TOKEN[:10]),
]


async def _stream(raw: str, cuts: list[int], gaps: list[float], *,
                  lone_close: bool = True) -> tuple[list[str], str]:
    """Feed ``raw`` cut at ``cuts`` through the reasoning filter into a LiveReply, time
    moving by ``gaps`` between pieces; returns (every update, the final text).
    ``lone_close`` False: a model with ``thinkTags: "paired"``."""
    clock = Clock()
    live, preview, _, _ = make(clock, interval=0.5)
    live.attempt("m")
    filt = ReasoningFilter(lone_close=lone_close)
    pieces = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
    parts: list[str] = []
    for piece, gap in zip(pieces, gaps, strict=False):
        out = filt.feed(piece)
        parts.append(out)
        live.text(out)
        await clock.advance(gap)
    for piece in pieces[len(gaps):]:
        out = filt.feed(piece)
        parts.append(out)
        live.text(out)
    await clock.advance(2)
    await live.finish()
    parts.append(filt.finish())
    return preview.texts, "".join(parts)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=st.sampled_from(REASONING_CASES), data=st.data())
def test_every_update_is_a_prefix_of_the_final_and_holds_no_reasoning(case, data):
    raw, hidden = case
    cuts = sorted(data.draw(st.sets(st.integers(1, len(raw) - 1), max_size=12)))
    gaps = data.draw(st.lists(st.sampled_from([0.0, 0.1, 0.6, 2.5]), max_size=len(cuts) + 1))
    updates, final = asyncio.run(_stream(raw, cuts, gaps))
    assert final == strip_reasoning(raw)
    shown_final = redact_configured(final)
    assert updates  # at least the placeholder
    for text in updates:
        assert shown_final.startswith(text), (text, shown_final)
        if hidden is not None:
            assert hidden not in text
        assert "<thi" not in text or "`</think>`" in text


PAIRED_CASES = [
    "<think>I should not be seen</think>The answer is forty two, surely. ",
    "Hello <think>secret musing</think> world and more words here. ",
    f"Your token is {TOKEN} as you asked, keep it safe. ",
    "Plain text from a model that never thinks aloud, streamed word by word. ",
]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.sampled_from(PAIRED_CASES), data=st.data())
def test_paired_think_tags_stream_at_once_and_stay_a_prefix(raw, data):
    cuts = sorted(data.draw(st.sets(st.integers(1, len(raw) - 1), max_size=12)))
    gaps = data.draw(st.lists(st.sampled_from([0.0, 0.1, 0.6, 2.5]), min_size=len(cuts) + 1,
                              max_size=len(cuts) + 1))
    updates, final = asyncio.run(_stream(raw, cuts, gaps, lone_close=False))
    assert final == strip_reasoning(raw, lone_close=False)
    shown_final = redact_configured(final)
    for text in updates:
        assert shown_final.startswith(text), (text, shown_final)
        assert "secret" not in text and "seen" not in text and "7000001:" not in text
    if any(gaps):  # time passed while it streamed: some of the answer was shown
        assert any(updates)


def test_a_late_lone_close_shows_nothing_until_it_arrives():
    chunks = ["Let me ", "think it ", "over.</think>", "Paris is big. "]
    raw = "".join(chunks)
    cuts = [len("".join(chunks[:i])) for i in range(1, len(chunks))]
    updates, final = asyncio.run(_stream(raw, cuts, [2.0, 2.0, 2.0]))
    assert final == "Paris is big."
    assert updates and all(t in ("", "Paris", "Paris is", "Paris is big.") for t in updates)
    assert all("think" not in t and "over" not in t for t in updates)


def test_a_bot_token_split_over_deltas_is_never_shown_in_part():
    raw = f"Here: {TOKEN} done and more. "
    at = raw.index(TOKEN) + 8  # "7000001:" | "AA…"
    rng = random.Random(17)
    for _ in range(30):
        cuts = sorted({at, *rng.sample(range(1, len(raw)), 4)})
        updates, _final = asyncio.run(_stream(raw, cuts, [0.6] * (len(cuts) + 1),
                                              lone_close=False))
        assert all("7000001:" not in t for t in updates)
        assert any(REDACTED in t for t in updates)


# -- ActiveTurns ---------------------------------------------------------------------------


async def test_stop_cancels_only_the_child_and_the_caller_can_tell():
    active = ActiveTurns()
    started = asyncio.Event()

    async def phase() -> str:
        started.set()
        await asyncio.Event().wait()
        return "never"

    async def turn() -> tuple[str, int]:
        try:
            return await active.run("s", 5, phase()), 0
        except asyncio.CancelledError:
            task = asyncio.current_task()
            assert task is not None
            return "stopped", task.cancelling()

    running = asyncio.create_task(turn())
    await started.wait()
    assert active.running("s") == 5 and active.running("other") is None
    assert active.stop("s") is True
    assert await running == ("stopped", 0)  # not the caller's own cancellation
    assert active.running("s") is None and active.stop("s") is False


async def test_a_cancelled_caller_takes_the_child_down_and_sees_its_own_cancel():
    active = ActiveTurns()
    child_cancelled = asyncio.Event()

    async def phase() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            child_cancelled.set()
            raise

    async def turn() -> int:
        try:
            await active.run("s", 1, phase())
        except asyncio.CancelledError:
            task = asyncio.current_task()
            assert task is not None
            return task.cancelling()
        return -1

    running = asyncio.create_task(turn())
    await settle()
    running.cancel()
    assert await running == 1  # shutdown, not /stop
    assert child_cancelled.is_set() and active.running("s") is None


async def test_a_phase_that_returned_is_not_running():
    active = ActiveTurns()

    async def phase() -> int:
        return 3

    assert await active.run("s", 1, phase()) == 3
    assert active.running("s") is None and active.stop("s") is False


# -- start-up clean-up ------------------------------------------------------------------------


@dataclass
class _Stale:
    turn_id: int
    address: ChatAddress
    key: PreviewKey


class _CleanupStore:
    def __init__(self, rows: list[_Stale]) -> None:
        self.rows = rows
        self.asked: list[list[tuple[str, str]]] = []
        self.dropped: list[int] = []

    async def stale_previews(self, channels):
        self.asked.append(sorted(channels))
        return self.rows

    async def drop_preview(self, turn_id: int) -> None:
        self.dropped.append(turn_id)


class _DiscardChannel(FakeChannel):
    def __init__(self, fail_for: set[str]) -> None:
        super().__init__()
        self.fail_for = fail_for
        self.discarded: list[str] = []

    def owns(self, address: ChatAddress) -> bool:
        return True

    async def discard_preview(self, address: ChatAddress, key: PreviewKey) -> None:
        if key.platform_id in self.fail_for:
            raise SendError("telegram: network down", retryable=True)
        self.discarded.append(key.platform_id)


async def test_stale_previews_are_discarded_and_a_failure_keeps_its_row():
    rows = [_Stale(1, DM, PreviewKey(PreviewMode.EDIT, "42:10")),
            _Stale(2, DM, PreviewKey(PreviewMode.EDIT, "42:11")),
            _Stale(3, ChatAddress("whatsapp", "default", "x", ChatKind.DIRECT),
                   PreviewKey(PreviewMode.EDIT, "x:1"))]
    store = _CleanupStore(rows)
    channel = _DiscardChannel(fail_for={"42:11"})
    removed = await discard_stale_previews(store, [channel])  # type: ignore[arg-type]
    assert store.asked == [[("telegram", "default")]]
    assert channel.discarded == ["42:10"] and store.dropped == [1] and removed == 1
