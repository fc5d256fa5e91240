"""bridge.formatting: Markdown -> Telegram HTML / WhatsApp / plain, and chunking."""

from __future__ import annotations

import html
import random
import re
from html.parser import HTMLParser

import pytest

from bridge.formatting import chunk_text, render, to_plain, to_telegram_html, to_whatsapp, utf16_len
from channels.base import Markup

TG = Markup.TELEGRAM_HTML
ALLOWED_TAGS = {"b", "i", "s", "code", "pre", "a", "blockquote"}


class _Balance(HTMLParser):
    """Checks that a Telegram HTML chunk is balanced and uses only allowed tags."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.text: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag not in ALLOWED_TAGS:
            self.errors.append(f"tag {tag}")
        self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unbalanced </{tag}> with {self.stack}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def check_html(chunk: str) -> str:
    """Assert ``chunk`` is balanced Telegram HTML; return its visible text."""
    # Raw '<' or '&' that is not a tag or an entity would make Telegram reject it.
    assert not re.search(r"<(?!/?(b|i|s|code|pre|a|blockquote)[ >])", chunk), chunk
    assert not re.search(r"&(?!(amp|lt|gt|quot|#x27|#39);)", chunk), chunk
    parser = _Balance()
    parser.feed(chunk)
    parser.close()
    assert not parser.errors, (parser.errors, chunk)
    assert not parser.stack, (parser.stack, chunk)
    return "".join(parser.text)


def squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


# --------------------------------------------------------------------------- inline


@pytest.mark.parametrize(
    ("md", "expected"),
    [
        ("**bold**", "<b>bold</b>"),
        ("__bold__", "<b>bold</b>"),
        ("*it* and _it_", "<i>it</i> and <i>it</i>"),
        ("~~gone~~", "<s>gone</s>"),
        ("`a<b>&c`", "<code>a&lt;b&gt;&amp;c</code>"),
        ("``has ` tick``", "<code>has ` tick</code>"),
        ("***both***", "<b><i>both</i></b>"),
        ("**bold *inner* more**", "<b>bold <i>inner</i> more</b>"),
        ("**bold *it***", "<b>bold <i>it</i></b>"),
        ("a < b && c > d", "a &lt; b &amp;&amp; c &gt; d"),
        ("<script>x</script>", "&lt;script&gt;x&lt;/script&gt;"),
        ("snake_case_name here", "snake_case_name here"),
        ("2 * 3 * 4", "2 * 3 * 4"),
        (r"\*not italic\*", "*not italic*"),
        ("**unclosed bold", "**unclosed bold"),
        ("~single~", "~single~"),
        ("[site](https://e.com/a?b=1&c=2)", '<a href="https://e.com/a?b=1&amp;c=2">site</a>'),
        ('[q](https://e.com/"x")', '<a href="https://e.com/&quot;x&quot;">q</a>'),
        ("[**bold** link](https://e.com)", '<a href="https://e.com"><b>bold</b> link</a>'),
        ("<https://e.com/x>", '<a href="https://e.com/x">https://e.com/x</a>'),
        ("[bad](javascript:alert(1))", "bad (javascript:alert(1))"),
        ("![cat](https://e.com/c.png)", '<a href="https://e.com/c.png">cat</a>'),
        ("see https://x.com/_a_b_ now", "see https://x.com/_a_b_ now"),
        ("`**no bold in code**`", "<code>**no bold in code**</code>"),
    ],
)
def test_inline_telegram(md, expected):
    assert to_telegram_html(md) == expected


def test_inline_whatsapp_and_plain():
    md = "**b** *i* ~~s~~ `c` [text](https://e.com) [https://e.com](https://e.com)"
    assert to_whatsapp(md) == "*b* _i_ ~s~ `c` text (https://e.com) https://e.com"
    assert to_plain(md) == "b i s c text (https://e.com) https://e.com"


# --------------------------------------------------------------------------- blocks


def test_code_block_with_language_is_escaped_verbatim():
    md = "Before\n\n```python\nif a < b and c & d:\n    print('**x**')\n```\n\nAfter"
    assert to_telegram_html(md) == (
        "Before\n\n"
        '<pre><code class="language-python">if a &lt; b and c &amp; d:\n'
        "    print('**x**')</code></pre>\n\nAfter"
    )
    assert to_whatsapp(md) == "Before\n\n```if a < b and c & d:\n    print('**x**')```\n\nAfter"


def test_code_block_variants():
    assert to_telegram_html("```\nplain\n```") == "<pre>plain</pre>"
    assert to_telegram_html("~~~sh\nls\n~~~") == '<pre><code class="language-sh">ls</code></pre>'
    # An unclosed fence (truncated answer) still renders as code.
    assert to_telegram_html("```js\nlet a") == '<pre><code class="language-js">let a</code></pre>'
    # A hostile language name cannot break out of the attribute.
    out = to_telegram_html('```py"><b>\nx\n```')
    check_html(out)
    assert 'class="language-py">' not in out or "<b>" not in out.split("</code>")[0][40:]


def test_indented_fence_inside_list():
    md = "1. Run:\n   ```bash\n   make all\n   ```\n2. Done"
    out = to_telegram_html(md)
    assert '<pre><code class="language-bash">make all</code></pre>' in out
    assert out.startswith("1. Run:") and out.endswith("2. Done")


def test_headings_quotes_lists_rule():
    md = (
        "# Title\n\nText\n\nSub\n===\n\n> quoted **x**\n> more\n\n"
        "- one\n- *two*\n  - nested\n1. first\n2) second\n- [x] done\n- [ ] todo\n\n---\n\nEnd"
    )
    out = to_telegram_html(md)
    assert out == (
        "<b>Title</b>\n\nText\n\n<b>Sub</b>\n\n<blockquote>quoted <b>x</b>\nmore</blockquote>\n\n"
        "• one\n• <i>two</i>\n   • nested\n1. first\n2. second\n☑ done\n☐ todo\n\n──────────\n\nEnd"
    )
    wa = to_whatsapp(md)
    assert "*Title*" in wa and "> quoted *x*\n> more" in wa and "- _two_" in wa


def test_table_rendered_aligned_in_pre():
    md = "| Name | Qty |\n|:-----|----:|\n| apple | **3** |\n| kiwi & co | 12 |"
    out = to_telegram_html(md)
    assert out == (
        "<pre>Name      | Qty\n----------+----\napple     | 3\nkiwi &amp; co | 12</pre>"
    )
    assert to_plain(md).splitlines()[0] == "Name      | Qty"


def test_paragraph_line_breaks_are_kept():
    assert to_telegram_html("line one\nline two") == "line one\nline two"


def test_empty_and_whitespace():
    assert render("", TG, 100) == []
    assert render("  \n\n ", TG, 100) == []
    assert to_telegram_html("") == ""


def test_rejects_non_positive_limit():
    with pytest.raises(ValueError):
        render("x", TG, 0)
    with pytest.raises(ValueError):
        chunk_text("x", 0)


# --------------------------------------------------------------------------- chunking


def test_utf16_len_counts_astral_twice():
    assert utf16_len("abc") == 3
    assert utf16_len("🎉") == 2
    assert utf16_len("é🎉x") == 4


def test_short_text_is_one_chunk():
    assert render("**hi** there", TG, 4000) == ["<b>hi</b> there"]


def test_prefers_paragraph_then_line_then_sentence():
    paras = "\n\n".join(f"Paragraph {i} " + "word " * 30 for i in range(5))
    chunks = render(paras, Markup.PLAIN, 400)
    assert all(c.startswith("Paragraph ") for c in chunks)
    lines = "\n".join(f"Line {i} " + "word " * 15 for i in range(10))
    chunks = render(lines, Markup.PLAIN, 300)
    assert len(chunks) > 1 and all(c.startswith("Line ") for c in chunks)
    sentences = " ".join(f"Sentence {i} has some words." for i in range(40))
    chunks = render(sentences, Markup.PLAIN, 200)
    assert len(chunks) > 1
    assert all(c.startswith("Sentence ") and c.endswith(".") for c in chunks)


def test_heading_is_not_sent_alone():
    md = "## Heading\n\n" + "A sentence that goes on. " * 80
    chunks = render(md, TG, 1000)
    assert chunks[0].startswith("<b>Heading</b>\n\nA sentence")
    assert all(utf16_len(c) <= 1000 for c in chunks)


def test_long_bold_paragraph_is_closed_and_reopened():
    md = "**" + ("bold words here. " * 60).strip() + "**"
    chunks = render(md, TG, 300)
    assert len(chunks) > 3
    for c in chunks:
        check_html(c)
        assert c.startswith("<b>") and c.endswith("</b>")
        assert utf16_len(c) <= 300


def test_entities_and_tags_never_split():
    md = "a & b < c > d " * 200 + " [link text here](https://example.com/path?x=1&y=2) " * 20
    for limit in (200, 257, 333):
        chunks = render(md, TG, limit)
        visible = ""
        for c in chunks:
            assert utf16_len(c) <= limit
            visible += check_html(c)
        assert squash(visible) == squash(html.unescape(re.sub("<[^>]+>", "", to_telegram_html(md))))


def test_astral_characters_measured_in_utf16():
    md = "🎉" * 3000
    chunks = render(md, TG, 4000)
    assert all(utf16_len(c) <= 4000 for c in chunks)
    assert [len(c) for c in chunks] == [2000, 1000]
    assert "".join(chunks) == md


def test_small_code_block_kept_whole():
    md = "Short intro.\n\n```js\n" + "let a = 1;\n" * 30 + "```\n\nAfter. " + "More text. " * 30
    chunks = render(md, TG, 500)
    pre = [c for c in chunks if "<pre>" in c]
    assert len(pre) == 1 and pre[0].count("let a = 1;") == 30


def test_nine_thousand_char_reply_with_code_block():
    prose = " ".join(f"Sentence number {i} explains a detail of the solution." for i in range(48))
    code_lines = [f"    result_{i} = compute(value_{i}) < limit and flag  # step {i}" for i in range(70)]
    md = (
        "## Plan\n\n" + prose + "\n\n```python\ndef main():\n" + "\n".join(code_lines)
        + "\n```\n\n**Summary**: " + prose[:2200]
    )
    assert 9000 <= len(md) <= 10000
    limit = 4000
    chunks = render(md, TG, limit)
    assert 3 <= len(chunks) <= 5
    code_seen: list[str] = []
    visible = ""
    for chunk in chunks:
        assert utf16_len(chunk) <= limit
        visible += check_html(chunk)
        for body in re.findall(r'<pre><code class="language-python">(.*?)</code></pre>', chunk, re.S):
            code_seen.extend(html.unescape(body).split("\n"))
        # Code only ever appears inside a complete, language-tagged block.
        assert chunk.count("<pre>") == chunk.count("</pre>")
    # The code block was split (it is larger than one chunk) at line boundaries only.
    assert sum("<pre>" in c for c in chunks) >= 2
    assert code_seen == ["def main():", *code_lines]
    assert squash(visible) == squash(html.unescape(re.sub("<[^>]+>", "", to_telegram_html(md))))


def test_whatsapp_code_block_split_is_reopened():
    md = "```\n" + "\n".join(f"line {i} of code" for i in range(100)) + "\n```"
    chunks = render(md, Markup.WHATSAPP, 300)
    assert len(chunks) > 3
    lines: list[str] = []
    for c in chunks:
        assert c.startswith("```") and c.endswith("```") and utf16_len(c) <= 300
        lines.extend(c[3:-3].split("\n"))
    assert lines == [f"line {i} of code" for i in range(100)]


def test_whatsapp_quote_prefix_survives_split():
    md = "\n".join(f"> quoted line {i} with words" for i in range(40))
    chunks = render(md, Markup.WHATSAPP, 200)
    assert len(chunks) > 2
    for c in chunks:
        assert all(line.startswith("> ") for line in c.split("\n")), c


def test_chunk_text_plain():
    text = "a" * 50 + "\n\n" + "Short one. Another one here. " * 5
    chunks = chunk_text(text, 30)
    assert chunks[:2] == ["a" * 30, "a" * 20]
    assert all(utf16_len(c) <= 30 for c in chunks)
    assert squash("".join(chunks)) == squash(text)
    assert chunk_text("hello", 30) == ["hello"]


def test_hard_split_of_a_long_word():
    chunks = render("x" * 1000, TG, 300)
    assert [len(c) for c in chunks] == [300, 300, 300, 100]


@pytest.mark.parametrize("seed", range(12))
def test_random_markdown_invariants(seed):
    rng = random.Random(seed)
    pieces = [
        lambda: "**" + " ".join(rng.choice(["bold", "a<b", "x&y", "é", "🎉"]) for _ in range(rng.randint(1, 30))) + "**",
        lambda: "*" + "italic " * rng.randint(1, 20) + "*",
        lambda: "`code & <x>`",
        lambda: "[link & text](https://e.com/?a=1&b=2)",
        lambda: "```" + rng.choice(["", "py", "c++"]) + "\n" + "\n".join("  x < y & z;" * rng.randint(1, 6) for _ in range(rng.randint(1, 40))) + "\n```",
        lambda: "> " + "quote words. " * rng.randint(1, 30),
        lambda: "- item " + "text " * rng.randint(1, 20),
        lambda: "| a | b |\n|---|---|\n" + "| 1 & 2 | <3> |\n" * rng.randint(1, 10),
        lambda: "# Heading " + "h " * rng.randint(1, 5),
        lambda: "Plain sentence. " * rng.randint(1, 50),
    ]
    md = "\n\n".join(rng.choice(pieces)() for _ in range(rng.randint(5, 25)))
    limit = rng.choice([200, 350, 1000, 4000])
    chunks = render(md, TG, limit)
    visible = ""
    for c in chunks:
        assert utf16_len(c) <= limit
        visible += check_html(c)
    assert squash(visible) == squash(html.unescape(re.sub("<[^>]+>", "", to_telegram_html(md))))
    wa = render(md, Markup.WHATSAPP, limit)
    assert all(utf16_len(c) <= limit for c in wa)
    assert all(c.count("```") % 2 == 0 for c in wa)
