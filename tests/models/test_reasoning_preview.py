"""The reasoning filter as a live preview sees it: what ``feed()`` returns while the answer
streams is final text, never reasoning, whatever the chunking.

Properties, over random chunkings (hypothesis, derandomized):

- the concatenation of the ``feed()`` outputs so far is always a prefix of the final text,
  and ``feed()``s + ``finish()`` equal :func:`strip_reasoning` with the same flags;
- no output ever holds reasoning (the samples mark it with ``SECRET``), nor the start of a
  tag that is still arriving;
- :meth:`ReasoningFilter.server_parses_reasoning` gives the same final for every chunking:
  ``lone_close=False`` when called before any non-whitespace text, a no-op after.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from bridge.models.reasoning import ReasoningFilter, strip_reasoning

# REASONING_PROPERTY_EXAMPLES=5000 for a longer hunt.
SETTINGS = settings(max_examples=int(os.environ.get("REASONING_PROPERTY_EXAMPLES", "300")), deadline=None, derandomize=True, database=None,
                    phases=(Phase.explicit, Phase.generate, Phase.shrink),
                    suppress_health_check=[HealthCheck.too_slow])

HARMONY = ("<|channel|>analysis<|message|>SECRET thoughts<|end|>"
           "<|start|>assistant<|channel|>final<|message|>Hi there<|return|>")

# (text, {lone_close: expected final}, strings no output may ever contain in those modes)
SAMPLES: list[tuple[str, dict[bool, str], tuple[str, ...]]] = [
    ("<think>SECRET plan</think>The answer is 42.",
     {True: "The answer is 42.", False: "The answer is 42."}, ("SECRET", "<thi", "plan")),
    # A lone close arriving late: everything before it was reasoning ("auto").
    ("Let me think SECRET it over.</think>Paris.", {True: "Paris."}, ("SECRET", "Let")),
    # ... and for a "paired" model it is a stray tag: the text before it is the answer.
    ("Let me think it over.</think> Paris.", {False: "Let me think it over. Paris."}, ()),
    # A tag split across chunks, anywhere.
    ("Hello <think>SECRET</think> world", {True: "world", False: "Hello world"},
     ("SECRET", "<thi", "<")),
    ("<thinking>SECRET</thinking>Hi", {True: "Hi", False: "Hi"}, ("SECRET", "<")),
    ("<reasoning>SECRET</reasoning>Done", {True: "Done", False: "Done"}, ("SECRET", "<")),
    ("<think mode=deep>SECRET</think>\n\nAttrs", {True: "Attrs", False: "Attrs"},
     ("SECRET", "<")),
    ("<think>SECRET <think>SECRET</think> SECRET</think>done",
     {True: "done", False: "done"}, ("SECRET",)),
    ("Answer first. <think>SECRET never closes", {False: "Answer first."}, ("SECRET",)),
    # A code example showing the tags is the answer's own text.
    ("Like this:\n```\n<think>plan</think>\n```\nDone.",
     {True: "Like this:\n```\n<think>plan</think>\n```\nDone.",
      False: "Like this:\n```\n<think>plan</think>\n```\nDone."}, ()),
    ("Use `<think>` and `</think>` tags.",
     {True: "Use `<think>` and `</think>` tags.", False: "Use `<think>` and `</think>` tags."},
     ()),
    # A lone close inside a fence is still a lone close: reasoning is not markdown.
    ("Plan SECRET:\n```python\nprint(1)\n</think>\nAnswer", {True: "Answer"},
     ("SECRET", "Plan", "print")),
    # <final> wrappers are unwrapped.
    ("<think>SECRET</think>\n<final>The answer</final>",
     {True: "The answer", False: "The answer"}, ("SECRET", "<")),
    # Harmony (gpt-oss through a raw template).
    (HARMONY, {True: "Hi there", False: "Hi there"}, ("SECRET", "analysis", "<|")),
    ("analysis<|message|>SECRET<|end|><|start|>assistant<|channel|>final<|message|>Yes",
     {True: "Yes"}, ("SECRET", "analysis", "<|")),
]


@st.composite
def chunkings(draw, text: str) -> list[str]:
    """``text`` cut at random places (possibly every character)."""
    if not text:
        return [""]
    cuts = draw(st.sets(st.integers(1, max(1, len(text) - 1)), max_size=len(text)))
    bounds = [0, *sorted(cuts), len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


def stream(chunks: list[str], *, lone_close: bool,
           server_at: int | None = None) -> tuple[list[str], str]:
    """Feed ``chunks`` (calling server_parses_reasoning before chunk ``server_at``);
    return (the feed() outputs, the finish() output)."""
    f = ReasoningFilter(lone_close=lone_close)
    outs = []
    for i, chunk in enumerate(chunks):
        if i == server_at:
            f.server_parses_reasoning()
        outs.append(f.feed(chunk))
    if server_at is not None and server_at >= len(chunks):
        f.server_parses_reasoning()
    return outs, f.finish()


def check_prefixes(outs: list[str], rest: str, final: str) -> None:
    shown = ""
    for out in outs:
        shown += out
        assert final.startswith(shown), (shown, final)
    assert shown + rest == final


@SETTINGS
@given(st.data())
def test_samples_stream_only_final_text(data):
    text, expected, secrets = data.draw(st.sampled_from(SAMPLES))
    lone_close = data.draw(st.sampled_from(sorted(expected)))
    chunks = data.draw(chunkings(text))
    outs, rest = stream(chunks, lone_close=lone_close)
    final = strip_reasoning(text, lone_close=lone_close)
    assert final == expected[lone_close]
    check_prefixes(outs, rest, final)
    for out in outs:
        for secret in secrets:
            assert secret not in out, (secret, out, chunks)


def test_lone_close_arriving_late_shows_nothing_early():
    chunks = ["Let me ", "think it ", "over.", "</think>", "Paris", " is the answer."]
    outs, rest = stream(chunks, lone_close=True)
    assert outs[:4] == ["", "", "", ""]
    assert "".join(outs) + rest == "Paris is the answer."


def test_paired_streams_at_once_and_auto_holds_a_plain_answer_to_the_end():
    chunks = ["The ", "capital ", "is ", "Paris."]
    paired, _ = stream(chunks, lone_close=False)
    assert paired == ["The", " capital", " is", " Paris."]
    auto, rest = stream(chunks, lone_close=True)
    assert auto == ["", "", "", ""] and rest == "The capital is Paris."


def test_split_tag_never_shows_a_fragment():
    outs, rest = stream(["Hello <thi", "nk>secret</think> world"], lone_close=False)
    assert outs[0] == "Hello" and "<" not in "".join(outs)
    assert "".join(outs) + rest == "Hello world"


def test_server_parses_reasoning_releases_text_at_once():
    f = ReasoningFilter()
    f.server_parses_reasoning()  # reasoning_content arrived before any content
    assert f.feed("The ") == "The"
    # A late stray close is dropped, the text before it kept.
    assert f.feed("answer.</think> really") == " answer. really"
    assert f.finish() == ""
    assert not f.lone_close


def test_server_parses_reasoning_after_text_is_a_no_op():
    f = ReasoningFilter()
    assert f.feed("held") == ""
    f.server_parses_reasoning()
    assert f.lone_close
    assert f.feed("</think>Answer") == "Answer"
    assert f.finish() == ""


def test_server_parses_reasoning_after_whitespace_only_still_applies():
    f = ReasoningFilter()
    assert f.feed("\n\n") == ""
    f.server_parses_reasoning()
    assert f.feed("Hi") == "Hi"


# Fragments random texts are made of: every tag form, code markers, harmony tokens (some
# cut short), prose.
FRAGMENTS = ["<think>", "</think>", "<thinking>", "</thinking>", "<reasoning>",
             "</reasoning>", "<think mode=x>", "< /think >", "<final>", "</final>", "<think/>",
             "```", "`", "``", "~~~", "\n", "\n\n", " ", "  ", "word", "SECRET", "a < b",
             "<", ">", "<thi", "<|start|>", "<|channel|>", "<|message|>", "<|end|>",
             "<|return|>", "<|call|>", "<|constrain|>", "<|ret", "analysis", "final",
             "assistant", "to=fn", "python\n"]


@SETTINGS
@given(st.data())
def test_random_texts_stream_as_one_shot_with_server_parsing_anywhere(data):
    text = "".join(data.draw(st.lists(st.sampled_from(FRAGMENTS), max_size=14)))
    lone_close = data.draw(st.booleans())
    chunks = data.draw(chunkings(text))
    server_at = data.draw(st.none() | st.integers(0, len(chunks)))
    outs, rest = stream(chunks, lone_close=lone_close, server_at=server_at)
    fed_before = "".join(chunks[:server_at]) if server_at is not None else None
    parsed = fed_before is not None and not fed_before.strip()
    final = strip_reasoning(text, lone_close=lone_close and not parsed)
    check_prefixes(outs, rest, final)


@SETTINGS
@given(st.data())
def test_server_parsing_gives_one_final_for_every_chunking(data):
    """Reasoning announced after ``k`` characters of text: the same final however the
    text around it is cut."""
    text, _, _ = data.draw(st.sampled_from(SAMPLES))
    k = data.draw(st.integers(0, len(text)))
    head, tail = data.draw(chunkings(text[:k])), data.draw(chunkings(text[k:]))
    head = [c for c in head if c]
    outs, rest = stream(head + tail, lone_close=True, server_at=len(head))
    other_outs, other_rest = stream([text[:k], text[k:]], lone_close=True, server_at=1)
    assert "".join(outs) + rest == "".join(other_outs) + other_rest
