"""Inline reasoning never survives: every rule, whole and split across chunks."""

from __future__ import annotations

import pytest

from bridge.models.reasoning import ReasoningFilter, strip_reasoning

CASES = [
    ("<think>plan the answer</think>Hello", "Hello"),
    ("<thinking>a</thinking>Hi", "Hi"),
    ("<thought>a</thought>Hi", "Hi"),
    ("<antthinking>a</antthinking>Hi", "Hi"),
    ("<THINK>x</Think>Case", "Case"),
    ('<think data-x="1" mode=deep>x</think>\n\nAttrs', "Attrs"),
    # Text that does not start with an opening tag and has a closing one is template-opened
    # reasoning (a <think> inside it is a mention); see test_mentioned_open_tag_*.
    ("Hello <think>x</think> world", "world"),
    ("Para one.\n\n<think>x</think>\n\n\n\nPara two.", "Para two."),
    ("Para one.\n\n<think>x</think>\n\n\n\nPara two.".replace("Para one.", "<think>r</think>Para one."),
     "Para one.\n\nPara two."),
    ("<final>Yes.</final>", "Yes."),
    ("<think>r</think>\n<final>The answer</final>", "The answer"),
    # Template-opened tag: only the closing one appears.
    ("the user wants a greeting\n</think>\n\nHello!", "Hello!"),
    ("reasoning </THINKING> answer", "answer"),
    ("Answer first. <think>then trailing reasoning that never closes", "Answer first."),
    ("<think>nested <think>inner</think> still</think>done", "done"),
    # Code is left alone.
    ("Use `<think>` tags.", "Use `<think>` tags."),
    ("Use ``a `<think>` b`` ok", "Use ``a `<think>` b`` ok"),
    ("```html\n<think>kept</think>\n```\nafter", "```html\n<think>kept</think>\n```\nafter"),
    ("~~~\n<think>\n</think>\n~~~\nafter", "~~~\n<think>\n</think>\n~~~\nafter"),
    # A lone close is found whatever the markdown around it: reasoning is not markdown.
    ("~~~\n</think>\n~~~\nafter", "~~~\nafter"),
    ("Plan:\n```python\nprint(1)\n</think>\nAnswer", "Answer"),
    ("user typed ` by mistake</think>Use `ls` here", "Use `ls` here"),
    ("I could write ```code``` hmm, or ``` alone</think>The answer.", "The answer."),
    ("The user wants `x`</think>Answer", "Answer"),
    ("`<think>`</think>Answer", "Answer"),
    ("The user asks about the <think> tag, explain it.</think>The tag wraps reasoning.",
     "The tag wraps reasoning."),
    # ... but a code example showing both tags is the answer's own text.
    ("Use `<think>` and `</think>` tags.", "Use `<think>` and `</think>` tags."),
    ("Like this:\n```\n<think>plan</think>\n```\nDone.",
     "Like this:\n```\n<think>plan</think>\n```\nDone."),
    ("Wrap it as ``<think>x</think>`` please", "Wrap it as ``<think>x</think>`` please"),
    # Only bare tags or name="value" attributes are tags.
    ("Consider a <thought experiment> here. Answer is 42.",
     "Consider a <thought experiment> here. Answer is 42."),
    ("<think a=b c>not a tag", "<think a=b c>not a tag"),
    ("< think >r</ think >Answer", "Answer"),
    ("<think/>Answer", "Answer"),
    ("<think>r</think>```\n<think>k</think>\n```", "```\n<think>k</think>\n```"),
    # Not our tags.
    ("a < b and c > d", "a < b and c > d"),
    ("<thinker> is not a tag", "<thinker> is not a tag"),
    ("x <b>bold</b>", "x <b>bold</b>"),
    ("", ""),
    ("<think>only reasoning</think>", ""),
    ("  padded  ", "padded"),
]


@pytest.mark.parametrize(("raw", "expected"), CASES)
def test_strip_reasoning(raw, expected):
    assert strip_reasoning(raw) == expected


@pytest.mark.parametrize(("raw", "expected"), CASES)
def test_split_at_every_position(raw, expected):
    for cut in range(len(raw) + 1):
        f = ReasoningFilter()
        out = f.feed(raw[:cut]) + f.feed(raw[cut:]) + f.finish()
        assert out == expected, (cut, raw)


@pytest.mark.parametrize(("raw", "expected"), CASES)
def test_char_by_char(raw, expected):
    f = ReasoningFilter()
    out = "".join(f.feed(c) for c in raw) + f.finish()
    assert out == expected


def test_stream_emits_before_finish_once_reasoning_is_closed():
    f = ReasoningFilter()
    assert f.feed("<thi") == ""
    assert f.feed("nk>secret</think>Hel") == "Hel"
    assert f.feed("lo wor") == "lo wor"
    assert "secret" not in f.finish()


def test_text_before_any_tag_is_held_until_a_lone_close_decides():
    f = ReasoningFilter()
    assert f.feed("maybe reasoning") == ""
    assert f.feed("</think>answer") == "answer"
    assert f.finish() == ""


def test_lone_close_disabled_streams_at_once():
    f = ReasoningFilter(lone_close=False)
    assert f.feed("Hello there") == "Hello there"
    # A stray closing tag is dropped but earlier text is not retracted.
    assert f.feed(" </think> more") == " more"


def test_feed_after_finish_is_an_error():
    f = ReasoningFilter()
    f.finish()
    with pytest.raises(RuntimeError):
        f.feed("x")


def test_long_unclosed_angle_text_is_not_held_forever():
    text = "<think " + "x" * 400 + " end"
    assert strip_reasoning(text) == text


TRICKY = [raw for raw, _ in CASES if "</" in raw and len(raw) <= 70] + [
    "Plan:\n```python\nprint(1)\n</think>\nAnswer",
    "user typed ` by mistake</think>Use `ls` here",
    "Use `<think>` and `</think>` tags.",
    "a ``b`` c `d</think>e` f",
    "x ```\n</think>\n``` y",
    "Consider a <thought experiment></thought> done",
]


@pytest.mark.parametrize("raw", TRICKY)
def test_stream_equals_one_shot_for_every_pair_of_split_points(raw):
    expected = strip_reasoning(raw)
    for i in range(len(raw) + 1):
        for j in range(i, len(raw) + 1):
            f = ReasoningFilter()
            out = f.feed(raw[:i]) + f.feed(raw[i:j]) + f.feed(raw[j:]) + f.finish()
            assert out == expected, (i, j, raw)


def test_mentioned_open_tag_in_template_opened_reasoning_does_not_leak():
    raw = ("The user asks about the <think> tag, explain it.</think>"
           "The <think> tag wraps reasoning.")
    out = strip_reasoning(raw)
    assert "user asks" not in out and "explain it" not in out
    assert out.startswith("The")


def test_interleaved_blocks_after_a_lone_close_are_removed():
    raw = "Plan: reply briefly.\n\n</think>\n\nHi! <think>oops</think> there"
    assert strip_reasoning(raw) == "Hi! there"
