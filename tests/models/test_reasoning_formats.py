"""The last reasoning formats: ``<reasoning>`` blocks and OpenAI's harmony (gpt-oss).

Every case also runs split at every position and character by character: the stream gives
what the one-shot strip gives, and never shows early what later turns out to be reasoning.
"""

from __future__ import annotations

import pytest

from bridge.models.reasoning import ReasoningFilter, strip_reasoning
from tests.models.conftest import APIS
from tests.models.test_clients import REQ, client_for

REASONING_CASES = [
    ("<reasoning>plan the answer</reasoning>Hello", "Hello"),
    ("<REASONING mode=deep>x</Reasoning>\n\nCase", "Case"),
    ("<reasoning>a <reasoning>b</reasoning> c</reasoning>done", "done"),
    ("Answer first. <reasoning>then trailing reasoning that never closes", "Answer first."),
    # Template-opened: only the closing tag appears.
    ("the user wants a greeting\n</reasoning>\n\nHello!", "Hello!"),
    ("<reasoning>a</reasoning>Hi! <reasoning>oops</reasoning> there <reasoning>", "Hi! there"),
    # Code in the answer is left alone.
    ("<reasoning>r</reasoning>Use `<reasoning>` tags.", "Use `<reasoning>` tags."),
    ("<reasoning>r</reasoning>```xml\n<reasoning>kept</reasoning>\n```\nafter",
     "```xml\n<reasoning>kept</reasoning>\n```\nafter"),
    ("<reasoning>r</reasoning>a <reasoningx> b", "a <reasoningx> b"),
]

THINK = 'User asks: "What is 2 + 2?" Simple arithmetic. Provide answer.'
HARMONY_CASES = [
    # The spec's example output: the prompt ended with <|start|>assistant.
    (f"<|channel|>analysis<|message|>{THINK}<|end|>\n"
     "<|start|>assistant<|channel|>final<|message|>2 + 2 = 4.<|return|>", "2 + 2 = 4."),
    # Every message with its own start; the stop token left out by the server.
    (f"<|start|>assistant<|channel|>analysis<|message|>{THINK}<|end|>"
     "<|start|>assistant<|channel|>final<|message|>Four.", "Four."),
    # Only a final channel, no start.
    ("<|channel|>final<|message|>Only this.<|return|>", "Only this."),
    ("<|channel|>final<|message|>Only this.", "Only this."),
    # A tool call on commentary (recipient, <|constrain|>) and a preamble: dropped.
    ("<|channel|>analysis<|message|>Need get_weather.<|end|>"
     "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json"
     '<|message|>{"location":"San Francisco"}<|call|>', ""),
    ("<|channel|>analysis<|message|>plan<|end|><|start|>assistant<|channel|>commentary"
     "<|message|>**Action plan**: step one<|end|><|start|>assistant<|channel|>commentary "
     'to=functions.generate_file<|constrain|>json<|message|>{"path": "index.html"}<|call|>'
     "<|start|>assistant<|channel|>final<|message|>Done.<|return|>", "Done."),
    # The recipient in the role part of the header.
    ("<|start|>assistant to=functions.x<|channel|>final<|message|>{}<|call|>"
     "<|start|>assistant<|channel|>final<|message|>Shown<|return|>", "Shown"),
    # Cut streams: mid-analysis, mid-header, mid-token.
    ("<|channel|>analysis<|message|>still thinking about it", ""),
    ("<|channel|>analysis<|message|>x<|end|><|start|>assistant<|channel|>fin", ""),
    ("<|channel|>analysis<|message|>x<|end|><|start|>assistant<|channel|>final<|message|>"
     "Hello <|ret", "Hello"),
    ("<|channel|>analysis<|mess", ""),
    ("<|chan", ""),
    # A final message ending in a code block ends at its token, and the code is kept.
    ("<|channel|>analysis<|message|>a<|end|><|start|>assistant<|channel|>final<|message|>"
     "Code:\n```py\nprint('<reasoning>x</reasoning>')\n```<|return|>",
     "Code:\n```py\nprint('<reasoning>x</reasoning>')\n```"),
    ("<|channel|>final<|message|>Use `x<|end|><|start|>assistant<|channel|>analysis"
     "<|message|>secret", "Use `x"),
    ("<|channel|>final<|message|>Keep <think>no<|return|>", "Keep"),
    # Other inline formats inside the final message still go.
    ("<|channel|>final<|message|><reasoning>r</reasoning>Yes.<|return|>", "Yes."),
    # Lone tokens: the template wrote the header (or part of it).
    ("analysis<|message|>secret<|end|><|start|>assistant<|channel|>final<|message|>Hello",
     "Hello"),
    ("final<|message|>Hello<|return|>", "Hello"),
    ("secret<|end|><|start|>assistant<|channel|>final<|message|>Hello", "Hello"),
    ("secret plan\n<|start|>assistant<|channel|>final<|message|>Hello", "Hello"),
    ("secret<|channel|>final<|message|>Hello", "Hello"),
    ('{"q": 1}<|call|>', ""),
    # A plain answer with a stray end-of-turn token keeps its text.
    ("Hello there!<|end|>", "Hello there!"),
    ("Hello there!<|return|>", "Hello there!"),
    # An answer quoting the format in code keeps it (the stray token outside code goes).
    ("Like this:\n```\n<|start|>assistant<|channel|>final<|message|>Hi<|return|>\n```\n"
     "Done.<|return|>",
     "Like this:\n```\n<|start|>assistant<|channel|>final<|message|>Hi<|return|>\n```\nDone."),
    ("Use `<|channel|>` then `<|message|>`.<|end|>", "Use `<|channel|>` then `<|message|>`."),
]

CASES = REASONING_CASES + HARMONY_CASES
SPECIAL = ("<|", "|>")


@pytest.mark.parametrize(("raw", "expected"), CASES)
def test_strip(raw, expected):
    assert strip_reasoning(raw) == expected


@pytest.mark.parametrize(("raw", "expected"), CASES)
def test_split_at_every_position_never_shows_reasoning_early(raw, expected):
    for cut in range(len(raw) + 1):
        f = ReasoningFilter()
        early = f.feed(raw[:cut])
        # What is shown before the rest arrives is the start of the answer, nothing else.
        assert expected.startswith(early), (cut, early)
        assert early + f.feed(raw[cut:]) + f.finish() == expected, (cut, raw)


@pytest.mark.parametrize(("raw", "expected"), CASES)
def test_char_by_char(raw, expected):
    f = ReasoningFilter()
    shown = ""
    for ch in raw:
        shown += f.feed(ch)
        assert expected.startswith(shown), shown
    assert shown + f.finish() == expected


@pytest.mark.parametrize(("raw", "expected"), [
    ("<|channel|>analysis<|message|>pl<|end|>\n"
     "<|start|>assistant<|channel|>final<|message|>4.<|return|>", "4."),
    ("x<|end|><|start|>assistant<|channel|>final<|message|>`a`<|return|>", "`a`"),
    ("a</reasoning>b<|return|>", "b"),
    ("<|channel|>final<|message|>```\nk\n```<|end|>", "```\nk\n```"),
])
def test_every_pair_of_split_points(raw, expected):
    for i in range(len(raw) + 1):
        for j in range(i, len(raw) + 1):
            f = ReasoningFilter()
            out = f.feed(raw[:i]) + f.feed(raw[i:j]) + f.feed(raw[j:]) + f.finish()
            assert out == expected, (i, j, raw)


def test_special_tokens_never_reach_the_chat():
    for raw, _ in HARMONY_CASES[:-2]:  # the last two quote tokens in code
        out = strip_reasoning(raw)
        assert not any(t in out for t in SPECIAL), raw
        assert "secret" not in out and "Need" not in out and "plan" not in out


def test_final_channel_streams_before_the_end_and_holds_an_ambiguous_tail():
    f = ReasoningFilter()
    assert f.feed("<|channel|>analysis<|message|>hidden plan<|end|><|st") == ""
    assert f.feed("art|>assistant<|channel|>final<|message|>Hello wor") == "Hello wor"
    assert f.feed("ld <|chan") == "ld"  # "<|chan" may become a token: held
    assert f.feed("nel|>analysis<|message|>more plan<|end|>") == ""
    assert f.feed("<|start|>assistant<|channel|>final<|message|>Again <reas") == " Again"
    assert f.feed("oning>x</reasoning>done<|return|>") == " done"
    assert f.finish() == ""


def test_reasoning_block_streams_after_it_closes():
    f = ReasoningFilter()
    assert f.feed("<reas") == ""
    assert f.feed("oning>secret</reasoning>Hel") == "Hel"
    assert f.feed("lo") == "lo"
    assert f.finish() == ""


# ------------------------------------------------------------------ through each wire client

HARMONY_CHUNKS = [  # every boundary inside a token or a header
    "<|chan", "nel|>analysis<|mes", "sage|>SECRET plan<|e", "nd|>\n<|start|>assis",
    "tant<|channel|>fi", "nal<|message|>Hello ", "world<|ret", "urn|>",
]


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("stream", [True, False])
async def test_harmony_through_the_client(server, session, api, stream):
    server.reply(HARMONY_CHUNKS if stream else "".join(HARMONY_CHUNKS),
                 stream=None if stream else False)
    done = await client_for(server, api, session).complete(REQ)
    assert done.text == "Hello world"


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("stream", [True, False])
async def test_reasoning_tag_through_the_client(server, session, api, stream):
    chunks = ["<reaso", "ning>SECRET</reas", "oning>Hel", "lo"]
    server.reply(chunks if stream else "".join(chunks), stream=None if stream else False)
    done = await client_for(server, api, session).complete(REQ)
    assert done.text == "Hello"
