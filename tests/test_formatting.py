"""bridge.formatting: Markdown -> Telegram HTML / WhatsApp / plain, and chunking."""

from __future__ import annotations

import html
import random
import re

import pytest

from bridge import formatting
from bridge.formatting import (
    chunk_text,
    render,
    renderers,
    to_plain,
    to_telegram_html,
    to_whatsapp,
    utf16_len,
)
from bridge.formatting import chunks as chunking
from bridge.ports import Markup

TG = Markup.TELEGRAM_HTML
WA = Markup.WHATSAPP

# Telegram Bot API HTML (https://core.telegram.org/bots/api#html-style): only these
# tags; only &lt; &gt; &amp; &quot; named entities; <, > and & escaped everywhere else;
# entities properly nested, blockquotes never nested, nothing inside pre/code (except
# the <code class="language-x"> of a <pre>), and a link containing no link, code or pre.
_ALLOWED = {"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "span", "tg-spoiler",
            "a", "code", "pre", "blockquote"}
_INLINE_FMT = _ALLOWED - {"a", "code", "pre", "blockquote"}
_TAG_RE = re.compile(r'<(/?)([a-zA-Z-]+)((?:\s+[a-z-]+(?:="[^"]*")?)*)\s*>')
_ENTITY_RE = re.compile(r"&(lt|gt|amp|quot);")


def validate_html(chunk: str) -> tuple[list[str], str, list[str], str]:
    """Check one chunk against the Bot API's HTML rules.

    Returns (errors, visible text, texts of the <pre> elements in order, visible text
    outside them).
    """
    errors: list[str] = []
    stack: list[str] = []
    text: list[str] = []
    pres: list[str] = []
    outside: list[str] = []
    i = 0
    while i < len(chunk):
        c = chunk[i]
        if c == "<":
            m = _TAG_RE.match(chunk, i)
            if not m:
                errors.append(f"raw < at {i}: {chunk[i:i + 20]!r}")
                i += 1
                continue
            close, name, attrs = m.group(1), m.group(2), m.group(3).strip()
            if name not in _ALLOWED:
                errors.append(f"tag {name}")
            if close:
                if not stack or stack[-1] != name:
                    errors.append(f"misnested </{name}> in {stack}")
                else:
                    stack.pop()
            else:
                if name == "a" and not re.fullmatch(r'href="[^"]*"', attrs):
                    errors.append(f"<a {attrs}>")
                if name == "code" and attrs and not (
                    stack and stack[-1] == "pre" and re.fullmatch(r'class="language-[^"]+"', attrs)
                ):
                    errors.append(f"<code {attrs}> in {stack}")
                if name not in ("a", "code") and attrs and attrs != "expandable":
                    errors.append(f"attributes on <{name}>")
                if any(n in ("pre", "code") for n in stack) and not (name == "code" and stack[-1] == "pre"):
                    errors.append(f"<{name}> inside code/pre {stack}")
                if name == "blockquote" and "blockquote" in stack:
                    errors.append("nested blockquote")
                if name in ("a", "code", "pre") and "a" in stack:
                    errors.append(f"<{name}> inside <a>")
                if name == "pre" and any(n in _INLINE_FMT for n in stack):
                    errors.append(f"<pre> inside inline formatting {stack}")
                if name == "pre":
                    pres.append("")
                stack.append(name)
            for ent in re.findall(r"&[^;\s]*;?", attrs):
                if not _ENTITY_RE.fullmatch(ent):
                    errors.append(f"entity {ent!r} in attribute")
            i = m.end()
            continue
        if c == ">":
            errors.append(f"raw > at {i}")
        ch = c
        if c == "&":
            m = _ENTITY_RE.match(chunk, i)
            if not m:
                errors.append(f"bad entity {chunk[i:i + 8]!r}")
            else:
                ch = html.unescape(m.group(0))
                i = m.end() - 1
        text.append(ch)
        if "pre" in stack:
            pres[-1] += ch
        else:
            outside.append(ch)
        i += 1
    if stack:
        errors.append(f"unclosed {stack}")
    return errors, "".join(text), pres, "".join(outside)


def check_html(chunk: str) -> str:
    """Assert ``chunk`` is valid Telegram HTML; return its visible text."""
    errors, text, _, _ = validate_html(chunk)
    assert not errors, (errors, chunk)
    return text


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


# --------------------------------------------------------------------------- review fixes


@pytest.mark.parametrize(
    ("md", "tg", "wa"),
    [
        ("2*3*4 = 24", "2*3*4 = 24", "2*3*4 = 24"),
        ("Price: 3*x + 2*y", "Price: 3*x + 2*y", "Price: 3*x + 2*y"),
        ("ls src/*.py and *.txt", "ls src/*.py and *.txt", "ls src/*.py and *.txt"),
        ("a*b* and *c*d", "a*b* and *c*d", "a*b* and *c*d"),
        ("2**3 = 8 and 3**2 = 9", "2**3 = 8 and 3**2 = 9", "2**3 = 8 and 3**2 = 9"),
        ("*it* and *it*, ok", "<i>it</i> and <i>it</i>, ok", "_it_ and _it_, ok"),
        ("**bold**text", "<b>bold</b>text", "*bold*text"),
        ("foo**bar**baz", "foo<b>bar</b>baz", "foo*bar*baz"),
    ],
)
def test_star_inside_a_word_is_not_emphasis(md, tg, wa):
    assert to_telegram_html(md) == tg
    assert to_whatsapp(md) == wa


def test_bold_inside_bold_context_is_not_doubled():
    md = "### **Step 1:** Install"
    assert to_whatsapp(md) == "*Step 1: Install*"
    assert to_telegram_html(md) == "<b>Step 1: Install</b>"
    assert to_whatsapp("# ***Big*** deal") == "*_Big_ deal*"
    assert to_whatsapp("*a _b_ c*") == "_a b c_"
    assert to_whatsapp("**a __b__ c**") == "*a b c*"
    # A heading split over chunks still opens and closes one bold per chunk.
    chunks = render("# **" + ("Long heading words. " * 20).strip() + "**", WA, 120)
    assert len(chunks) > 2 and all(c.count("*") == 2 for c in chunks)


@pytest.mark.parametrize(
    ("md", "expected"),
    [
        ("_read https://x.com/a_b_ now_", "<i>read https://x.com/a_b_ now</i>"),
        ("*see https://x.com/a*b and more*", "<i>see https://x.com/a*b and more</i>"),
        ("*visit https://x.com/foo_bar_baz*", "<i>visit https://x.com/foo_bar_baz</i>"),
        ("_see https://x.com/a_b_", "<i>see https://x.com/a_b</i>"),
        ("**see https://x.com/a**", "<b>see https://x.com/a</b>"),
        ("_a <https://x.com/b_c> d_", '<i>a <a href="https://x.com/b_c">https://x.com/b_c</a> d</i>'),
        ("*a [b*](https://x.com)", '*a <a href="https://x.com">b*</a>'),
        ("_x [y](/p_q_) z_", '<i>x y (/p_q_) z</i>'),
    ],
)
def test_urls_and_links_are_opaque_to_emphasis(md, expected):
    assert to_telegram_html(md) == expected


def test_nested_quotes_are_flattened_for_telegram():
    # CommonMark: "> back out" right after "> > inner two" is a lazy continuation line
    # of the inner paragraph; a ">" line between them leaves the inner quote.
    md = "> outer **b**\n> > inner one\n> > inner two\n> back out"
    out = to_telegram_html(md)
    assert out == "<blockquote>outer <b>b</b>\n\n│ inner one\n│ inner two\n│ back out</blockquote>"
    check_html(out)
    out = to_telegram_html("> outer **b**\n> > inner one\n> > inner two\n>\n> back out")
    assert out == "<blockquote>outer <b>b</b>\n\n│ inner one\n│ inner two\n\nback out</blockquote>"
    check_html(out)
    deep = to_telegram_html("> " * 40 + "deep")
    check_html(deep)
    assert deep.count("│") <= 6 and deep.endswith("deep</blockquote>")
    # WhatsApp and plain text keep "> " prefixes; a split keeps them on every line.
    assert to_whatsapp("> > x\n> > y") == "> > x\n> > y"
    chunks = render("> > " + "\n> > ".join(f"line {i} of the quote" for i in range(30)), TG, 150)
    assert len(chunks) > 2
    for c in chunks:
        body = check_html(c)
        assert c.startswith("<blockquote>") and all(line.startswith("│ ") for line in body.split("\n"))


def test_links_contain_no_code_or_links():
    out = to_telegram_html("[`f()`](https://e.com) and [**`g`** x](https://e.com/g)")
    assert out == '<a href="https://e.com">f()</a> and <a href="https://e.com/g"><b>g</b> x</a>'
    check_html(out)
    # CommonMark: a link inside link text makes the outer brackets literal text.
    out = to_telegram_html("[see <https://in.com> or [b](https://b.com)](https://out.com)")
    assert out == ('[see <a href="https://in.com">https://in.com</a> or '
                   '<a href="https://b.com">b</a>](https://out.com)')
    check_html(out)
    # An image inside link text is CommonMark (markdown-it keeps an autolink there too):
    # inside a link, their text only.
    out = to_telegram_html("[![x](https://i.com/x.png) and <https://in.com>](https://out.com)")
    assert out == '<a href="https://out.com">x and https://in.com</a>'
    # Outside links code stays code; WhatsApp keeps the backticks.
    assert to_whatsapp("[`f()`](https://e.com)") == "`f()` (https://e.com)"


def test_href_uses_only_entities_the_bot_api_knows():
    out = to_telegram_html("[it's](https://x.com/it's?a=1&b=\"2\")")
    assert out == '<a href="https://x.com/it\'s?a=1&amp;b=&quot;2&quot;">it\'s</a>'
    check_html(out)


def test_link_too_long_for_a_chunk_becomes_text():
    url = "https://x.com/" + "y" * 300
    chunks = render(f"[label]({url})", TG, 200)
    assert all(utf16_len(c) <= 200 for c in chunks)
    assert "".join(chunks) == f"label ({url})"
    assert render(f"[label]({url})", TG, 4096) == [f'<a href="{url}">label</a>']


def test_validator_rejects_what_telegram_rejects():
    bad = [
        "<blockquote>a<blockquote>b</blockquote></blockquote>",
        '<a href="u"><code>x</code></a>',
        "<code><b>x</b></code>",
        "<b>a<pre>x</pre></b>",
        "<b><i>x</b></i>",
        "a > b",
        "a &#x27; b",
        '<a href="it&#x27;s">x</a>',
        "<b>open",
        "<u2>x</u2>",
    ]
    for chunk in bad:
        assert validate_html(chunk)[0], chunk
    ok = '<blockquote><b>q <a href="u?a=1&amp;b">l</a></b></blockquote><pre><code class="language-py">x</code></pre>'
    assert validate_html(ok)[0] == []


def ends_with_code(html_text: str) -> bool:
    """Whether nothing visible follows the last <pre> of ``html_text``."""
    tail = html_text.rsplit("</pre>", 1)[-1]
    return "</pre>" in html_text and not re.sub("<[^>]+>", "", tail).strip()


def code_preserved(blocks: list[str], per_chunk: list[list[str]], tail_droppable: bool) -> bool:
    """Whether the chunks' code pieces rebuild ``blocks`` exactly.

    A block may be split between consecutive chunks; at a line split the chunker drops
    exactly the one newline there, anywhere else nothing.  Empty blocks are invisible;
    if the message ends with code (``tail_droppable``), whitespace at its very end may
    be dropped (Telegram trims it anyway).
    """
    blocks = [b for b in blocks if b]
    pieces = [(k, t) for k, texts in enumerate(per_chunk) for t in texts if t]
    memo: dict[tuple[int, int, int], bool] = {}

    def go(p: int, b: int, off: int) -> bool:
        key = (p, b, off)
        if key not in memo:
            memo[key] = _go(p, b, off)
        return memo[key]

    def _go(p: int, b: int, off: int) -> bool:
        if b < len(blocks) and off == len(blocks[b]):
            return go(p, b + 1, 0)
        if p == len(pieces):
            rest = (blocks[b][off:] if b < len(blocks) else "") + "".join(blocks[b + 1 :])
            return not rest or (tail_droppable and not rest.strip())
        if b == len(blocks):
            return False
        chunk, text = pieces[p]
        remaining = blocks[b][off:]
        if off == 0:
            return remaining.startswith(text) and go(p + 1, b, len(text))
        if p == 0 or pieces[p - 1][0] != chunk - 1:
            return False  # a block continues only at the start of the next chunk
        return any(
            remaining.startswith(sep + text) and go(p + 1, b, off + len(sep) + len(text))
            for sep in ("", "\n")
        )

    return go(0, 0, 0)


def test_code_preserved_checker_can_fail():
    assert code_preserved(["ab\ncd"], [["ab"], ["cd"]], False)
    assert code_preserved(["a  b"], [["a "], [" b"]], False)
    assert not code_preserved(["a  b"], [["a"], ["b"]], False)  # lost whitespace
    assert not code_preserved(["ab", "cd"], [["ab", "c"]], False)
    assert code_preserved(["ab", "cd"], [["ab"], ["cd"]], False)
    assert not code_preserved(["abcd"], [["ab", "cd"]], False)  # split inside one chunk
    assert not code_preserved(["ab  "], [["ab"]], False)
    assert code_preserved(["ab  "], [["ab"]], True)
    assert not code_preserved(["ab  ", "c"], [["ab"], ["c"]], True)


@pytest.mark.parametrize(
    ("md", "limit"),
    [
        ("```\nname" + " " * 246 + "| description\n```", 200),
        ("```\nname" + " " * 246 + "\n```\n\nafter", 200),
        ("```\na" + " " * 300 + "b\n```", 200),
        ("```\n" + "a" * 150 + "\n" + " " * 195 + "| x\n```", 200),
        ("```\n" + " " * 195 + "| x\n```", 200),
        ("```\nb" + " " * 198 + "| x\n```", 200),
        ("| name | description |\n|---|---|\n| " + "x" * 250 + " | a |\n| b | c |", 200),
        ("```py\nx = 1\n\n\n\n" + "    y = 2\n" * 40 + "```", 120),
    ],
)
def test_whitespace_inside_code_survives_chunking(md, limit):
    chunks = render(md, TG, limit)
    for c in chunks:
        check_html(c)
        assert utf16_len(c) <= limit, (utf16_len(c), c)
    whole = to_telegram_html(md)
    per_chunk = [validate_html(c)[2] for c in chunks]
    assert code_preserved(validate_html(whole)[2], per_chunk, ends_with_code(whole)), chunks


def test_chunk_without_a_split_point_counts_closing_tags():
    # A code line starting with more indentation than fits: no split point after text,
    # so the chunker takes what fits -- closing tags included (this gave 106 > 100).
    md = "```py\n\n" + " " * 60 + "x\n```"
    chunks = render(md, TG, 100)
    assert [utf16_len(c) <= 100 for c in chunks] == [True, True]
    assert "".join(validate_html(c)[2][0] for c in chunks) == "\n" + " " * 60 + "x"


_FUZZ_PIECES = [
    "**", "*", "_", "__", "~~", "`", "```", "```py\n", "\n", "\n\n", "> ", "- ", "1. ", "   - ",
    "# ", "[a](https://x.com/a_(b))", "<", ">", "&", "😀", "word ", "snake_case ", "2*3 ",
    "| a | b |\n|---|---|\n| c | d |\n", "https://x.com/_a_ ", "text. ", "  ", " " * 60, "\\*",
    "[`c`](http://y)", "> > ", "### **h** ", "\t", "'\"", "[l](https://e.com/'q'&r)",
]


def squash_prose(text: str) -> str:
    """Text outside code without whitespace (free to move at splits) or quote bars."""
    return re.sub(r"[\s│]+", "", text)


@pytest.mark.parametrize("block", range(4))
def test_fuzz_every_chunk_is_valid_and_nothing_is_lost(block):
    rng = random.Random(568_000 + block)
    for _ in range(75):
        md = "".join(rng.choice(_FUZZ_PIECES) for _ in range(rng.randint(1, 250)))
        limit = rng.choice([200, 210, 256, 300, 4096])
        chunks = render(md, TG, limit)
        code: list[list[str]] = []
        prose = ""
        for c in chunks:
            errors, _, pres, outside = validate_html(c)
            assert not errors and utf16_len(c) <= limit, (md, limit, c, errors)
            code.append(pres)
            prose += outside
        whole = to_telegram_html(md)
        whole_errors, _, whole_pres, whole_outside = validate_html(whole)
        assert not whole_errors, (md, whole_errors)
        assert code_preserved(whole_pres, code, ends_with_code(whole)), (md, limit, chunks)
        assert squash_prose(prose) == squash_prose(whole_outside), (md, limit, chunks)
        for markup in (WA, Markup.PLAIN):
            assert all(utf16_len(c) <= limit for c in render(md, markup, limit)), (markup, md, limit)


def test_to_plain_renders_links_as_text_and_url():
    md = (
        "# Docs\n\nRead [**the** `guide`](https://e.com/a_b) or <https://e.com/x>, "
        "[https://e.com/y](https://e.com/y), ![cat](https://e.com/c.png) and "
        "[bad](javascript:alert(1)).\n\n> quoted [q](https://q.com)\n\n- [item](https://i.com) & <b>"
    )
    assert to_plain(md) == (
        "Docs\n\nRead the guide (https://e.com/a_b) or https://e.com/x, "
        "https://e.com/y, cat (https://e.com/c.png) and bad (javascript:alert(1)).\n\n"
        "> quoted q (https://q.com)\n\n• item (https://i.com) & <b>"
    )
    # Plain chunks (Telegram's fallback) stay under the limit and keep every URL whole.
    text = to_plain(" ".join(f"[link {i}](https://e.com/page/{i})" for i in range(200)))
    chunks = chunk_text(text, 300)
    assert all(utf16_len(c) <= 300 for c in chunks)
    assert sum(c.count("https://e.com/page/") for c in chunks) == 200


def _slow_render(text: str, markup: Markup, limit: int) -> list[str]:
    """render() without its fast path for plain text."""
    spec = renderers.SPECS[markup]
    return chunking.chunk_atoms(chunking.atoms(renderers.tokens(text, markup, limit), spec.escape), limit)


def test_render_fast_path_matches_the_full_renderer():
    """Plain replies skip the Markdown parser; the result must be the same, byte for byte."""
    rng = random.Random(1234)
    words = ["hello", "World", "I", "it's", "e.g.", "x-ray", "(see", "this)", "100%", "&",
             "A&B", "#tag", "x=1", "é", "日本", "😀", "Q:", "ok!", "www.example.com", "1.",
             "2)", "-", "+", ">", "<b>", "'q'", '"q"', "a\u00a0b", "\u2028", "*x*", "_y_",
             "http://e.com", "~z~", "`c`", "[l](u)", "|t|", "\\", "  ", "\t"]
    fast = 0
    for _ in range(800):
        lines = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 6)))
                 for _ in range(rng.randint(1, 3))]
        text = rng.choice(["\n", "\n\n", " "]).join(lines)
        for markup in (Markup.TELEGRAM_HTML, Markup.PLAIN, Markup.WHATSAPP):
            for limit in (4096, 20):
                if formatting._UNSAFE_FOR_FAST.search(text) is None:
                    fast += 1
                assert formatting.render(text, markup, limit) == \
                    _slow_render(text, markup, limit), (text, markup, limit)
    assert fast > 300  # the fast path was exercised
    assert formatting.render("Tom & Jerry <3", Markup.TELEGRAM_HTML, 100) == \
        ["Tom &amp; Jerry &lt;3"]


# --------------------------------------------------------------------------- markdown-it choices


@pytest.mark.parametrize(
    ("md", "expected"),
    [
        # What models write, as CommonMark reads it.
        ("* one\n* **two**", "• one\n• <b>two</b>"),
        ("1. a\n1. b", "1. a\n1. b"),  # numbers as written, like before
        ("- a\n\n- b", "• a\n\n• b"),  # a loose list keeps its blank lines
        ("Title\n---\n\ntext", "<b>Title</b>\n\ntext"),  # setext heading
        ("```py\ncode\n```\ntext", '<pre><code class="language-py">code</code></pre>\n\ntext'),
        ("    indented\n    code", "<pre>indented\ncode</pre>"),
        ("a  \nb", "a\nb"),  # hard line break
        ("a**b c**d", "a**b c**d"),  # intraword ** across a space: arithmetic-like, kept
        ("x**y**z", "x<b>y</b>z"),
        # Not HTML: entities and tags stay what the model wrote.
        ("AT&amp;T &copy; <br>", "AT&amp;amp;T &amp;copy; &lt;br&gt;"),
        # Footnote-style definitions stay visible (CommonMark would hide them).
        ("See [1].\n\n[1]: https://e.com/s", "See [1].\n\n[1]: https://e.com/s"),
        ("[](https://e.com)", '<a href="https://e.com">https://e.com</a>'),
        ("see (https://e.com/a_(b)) and https://e.com/x.", "see (https://e.com/a_(b)) and https://e.com/x."),
    ],
)
def test_commonmark_as_models_write_it(md, expected):
    assert to_telegram_html(md) == expected


def test_deep_nesting_loses_nothing():
    # markdown-it drops what lies deeper than its nesting limit; past ours it is text.
    for md in ("> " * 40 + "deep", "- " * 30 + "deep", "> - " * 15 + "deep"):
        assert check_html(to_telegram_html(md)).endswith("deep"), md
        for markup in (WA, Markup.PLAIN):
            assert render(md, markup, 4096)[-1].endswith("deep"), (md, markup)


# --------------------------------------------------------------------------- html_to_plain


@pytest.mark.parametrize(
    ("chunk", "expected"),
    [
        ("<b>bold</b> &amp; <i>it</i>", "bold & it"),
        ('<a href="https://e.com/a?b=1&amp;c=2">site</a>', "site (https://e.com/a?b=1&c=2)"),
        ('<a href="https://e.com">https://e.com</a>', "https://e.com"),
        ('<a href="https://e.com/&quot;x&quot;"><b>q</b> &lt;x&gt;</a>', 'q <x> (https://e.com/"x")'),
        ('<a href="https://e.com/a&amp;b"><code>https://e.com/a&amp;b</code></a>', "https://e.com/a&b"),
        ('<pre><code class="language-py">a &lt; b</code></pre>', "a < b"),
        ("<blockquote>x\n│ y</blockquote>", "x\n│ y"),
        ("a &lt;b&gt; &amp;amp;", "a <b> &amp;"),
        ('<a href="u">x</a> <a href="v">v</a>', "x (u) v"),
    ],
)
def test_html_to_plain(chunk, expected):
    assert formatting.html_to_plain(chunk) == expected


def test_html_to_plain_reads_rendered_chunks_like_to_plain():
    md = "Read [**the** guide](https://e.com/a_b) or <https://e.com/x> & `x<y>`.\n\n> quoted"
    chunk = to_telegram_html(md)
    assert formatting.html_to_plain(chunk) == (
        "Read the guide (https://e.com/a_b) or https://e.com/x & x<y>.\n\nquoted")


def test_one_chunk_shortcut_matches_the_chunker():
    """A reply that fits is joined directly; the chunker would give the same, byte for byte."""
    rng = random.Random(20261201)
    for _ in range(300):
        md = "".join(rng.choice(_FUZZ_PIECES) for _ in range(rng.randint(1, 60)))
        for markup in (TG, WA, Markup.PLAIN):
            limit = rng.choice([150, 4096])
            assert render(md, markup, limit) == _slow_render(md, markup, limit), (md, markup, limit)
    text = "a " * 40
    assert chunk_text(text, 100) == chunking.chunk_atoms(
        chunking.atoms([chunking.Text(text)], lambda s: s), 100) == [text]


def test_email_autolink_is_not_repeated():
    assert to_telegram_html("<a@b.org>") == '<a href="mailto:a@b.org">a@b.org</a>'
    assert to_whatsapp("mail <a_b@b.org>") == "mail a_b@b.org"
    assert to_plain("[me](mailto:me@b.org)") == "me (mailto:me@b.org)"


def test_table_row_with_extra_cells_loses_nothing():
    # GFM drops cells beyond the header's count; a chat shows them (as before).
    md = "| a | b |\n|---|---|\n| c | d | **e** |\n> x"
    assert to_plain(md) == "a | b |\n--+---+--\nc | d | e\n\n> x"
    assert to_plain("> | a |\n> |---|\n> | b | c\\|d |") == "> a |\n> --+----\n> b | c|d"
