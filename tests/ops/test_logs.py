"""setup_logging: text and JSON lines, extras, redaction, quiet libraries."""

from __future__ import annotations

import io
import json
import logging

import httpx
import pytest
from aiohttp import web
from pydantic import SecretStr

from bridge.logs import clear_secrets, redact, register_secret, setup_logging

BOT_TOKEN = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsawQ"
SK_KEY = "sk-ant-api03-Zx9yW8vU7tS6rQ5pO4nM3lK2jI1hG0f"
RUNTIME_SECRET = "correct-horse-battery-staple"


@pytest.fixture(autouse=True)
def _restore_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    noisy = {n: logging.getLogger(n).level for n in ("httpx", "httpcore", "aiohttp.access")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, lvl in noisy.items():
        logging.getLogger(name).setLevel(lvl)
    clear_secrets()


def _setup(level: str = "info", fmt: str = "text") -> io.StringIO:
    stream = io.StringIO()
    setup_logging(level, fmt, stream=stream)
    return stream


def _json_lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_json_lines_parse_and_carry_extra_fields():
    stream = _setup("info", "json")
    log = logging.getLogger("bridge.conversation")
    log.info("turn answered", extra={"session": "telegram:dm:42", "model": "localai/q",
                                     "attempts": 2, "duration_ms": 812.5})
    log.debug("not shown at info")
    log.warning("second line %s", "with arg")
    lines = _json_lines(stream)
    assert len(lines) == 2
    first = lines[0]
    assert first["msg"] == "turn answered"
    assert first["level"] == "info"
    assert first["logger"] == "bridge.conversation"
    assert first["ts"].endswith("Z") and "T" in first["ts"]
    assert (first["session"], first["model"], first["attempts"], first["duration_ms"]) == (
        "telegram:dm:42", "localai/q", 2, 812.5)
    assert lines[1]["msg"] == "second line with arg"
    assert lines[1]["level"] == "warning"


def test_json_exception_is_one_line_with_exc_field():
    stream = _setup("info", "json")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("x").exception("failed")
    (line,) = _json_lines(stream)
    assert line["msg"] == "failed"
    assert "RuntimeError: boom" in line["exc"]
    assert "Traceback" in line["exc"]


def test_text_format_is_human_readable_with_extras():
    stream = _setup("debug", "text")
    logging.getLogger("bridge.app").info("started", extra={"channels": "telegram",
                                                           "note": "two words"})
    out = stream.getvalue().strip()
    assert " INFO bridge.app: started" in out
    assert "channels=telegram" in out
    assert 'note="two words"' in out
    with pytest.raises(json.JSONDecodeError):
        json.loads(out)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_redacts_message_args_exception_and_extras(fmt):
    register_secret(SecretStr(RUNTIME_SECRET))
    stream = _setup("info", fmt)
    log = logging.getLogger("bridge.test")
    log.info("GET https://api.telegram.org/bot%s/getUpdates failed", BOT_TOKEN)
    log.info("provider said: invalid key " + SK_KEY)
    log.info("login with %s", RUNTIME_SECRET, extra={"detail": f"pw={RUNTIME_SECRET}"})
    log.info("headers %s", {"x-api-key": "abcd1234efgh", "Authorization": "Bearer tok.en.value"})
    try:
        raise ConnectionError(f"https://api.telegram.org/bot{BOT_TOKEN}/getMe: refused "
                              f"({SK_KEY})")
    except ConnectionError:
        log.exception("network error")
    out = stream.getvalue()
    for secret in (BOT_TOKEN, SK_KEY, RUNTIME_SECRET, "abcd1234efgh", "tok.en.value",
                   BOT_TOKEN.split(":")[1]):
        assert secret not in out, secret
    assert out.count("[REDACTED]") >= 7
    assert "https://api.telegram.org/bot[REDACTED]/getUpdates" in out
    assert "ConnectionError" in out and "network error" in out


def test_redaction_also_reaches_other_handlers_records():
    """The filter rewrites the record itself, so handlers after it see the redacted text."""
    _setup("info", "text")
    captured: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            captured.append(record)

    keep = Keep()
    logging.getLogger().addHandler(keep)
    try:
        logging.getLogger("t").info("token %s", BOT_TOKEN)
    finally:
        logging.getLogger().removeHandler(keep)
    assert captured and BOT_TOKEN not in captured[0].getMessage()


def test_register_secret_covers_url_encoded_form_and_ignores_tiny_values():
    register_secret("p@ss/word+42")
    register_secret("abc")  # too short to redact safely: ignored
    register_secret(None)
    assert redact("x p%40ss%2Fword%2B42 y") == "x [REDACTED] y"
    assert redact("p@ss/word+42") == "[REDACTED]"
    assert redact("abc abc") == "abc abc"


def test_redact_leaves_ordinary_text_alone():
    text = "max_tokens=8192 input_tokens: 5 using basic auth at 12:30 task-queue risk-free"
    assert redact(text) == text


def test_noisy_libraries_quiet_at_info_and_back_at_debug():
    _setup("info")
    assert not logging.getLogger("httpx").isEnabledFor(logging.INFO)
    assert not logging.getLogger("aiohttp.access").isEnabledFor(logging.INFO)
    assert logging.getLogger("bridge").isEnabledFor(logging.INFO)
    _setup("debug")
    assert logging.getLogger("httpx").isEnabledFor(logging.DEBUG)
    assert not logging.getLogger("httpcore").isEnabledFor(logging.DEBUG)


def test_setup_replaces_own_and_basicconfig_handlers_only():
    root = logging.getLogger()
    plain = logging.StreamHandler(io.StringIO())  # what neonize's basicConfig installs
    root.addHandler(plain)
    foreign = logging.NullHandler()
    root.addHandler(foreign)
    _setup("info")
    stream = _setup("warning", "json")
    assert plain not in root.handlers
    assert foreign in root.handlers
    logging.getLogger("y").warning("once")
    assert len(_json_lines(stream)) == 1
    assert plain.stream.getvalue() == ""


def test_bad_level_or_format_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        setup_logging("loud", "text")
    with pytest.raises(ValueError, match="unknown log format 'xml'"):
        setup_logging("info", "xml")


async def test_httpx_request_line_never_shows_the_bot_token():
    """A real httpx request to a fake Bot API: its INFO request line is redacted."""

    async def get_me(request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "result": {"id": 123456789, "is_bot": True}})

    app = web.Application()
    app.router.add_get("/bot{token}/getMe", get_me)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        stream = _setup("debug", "json")  # debug: httpx's request line is emitted
        async with httpx.AsyncClient(trust_env=False) as client:
            resp = await client.get(f"http://127.0.0.1:{port}/bot{BOT_TOKEN}/getMe")
        assert resp.json()["ok"] is True
        lines = [x for x in _json_lines(stream) if x["logger"] == "httpx"]
        assert lines, "httpx logged no request line"
        assert all(BOT_TOKEN not in json.dumps(x) for x in lines)
        assert any("/bot[REDACTED]/getMe" in x["msg"] for x in lines)

        stream = _setup("info", "json")  # info: httpx is quiet altogether
        async with httpx.AsyncClient(trust_env=False) as client:
            await client.get(f"http://127.0.0.1:{port}/bot{BOT_TOKEN}/getMe")
        assert [x for x in _json_lines(stream) if x["logger"] == "httpx"] == []
    finally:
        await runner.cleanup()


def test_turn_line_fields_in_json():
    from bridge.logs import turn_fields
    from bridge.models.base import Attempt, ErrorClass, ModelReply, Usage

    reply = ModelReply("secret answer text", "anthropic/claude-sonnet-4-5", Usage(), "stop", (
        Attempt("localai/llama", ErrorClass.TIMEOUT, 1.2),
        Attempt("anthropic/claude-sonnet-4-5", None, 0.8),
    ))
    stream = _setup("info", "json")
    logging.getLogger("bridge.conversation").info("turn answered", extra=turn_fields(
        session="telegram:dm:42", outcome="answered", duration_s=2.0512, reply=reply))
    (line,) = _json_lines(stream)
    assert line["session"] == "telegram:dm:42"
    assert line["model"] == "anthropic/claude-sonnet-4-5"
    assert line["attempts"] == 2
    assert line["duration_ms"] == 2051.2
    assert line["tried"] == "localai/llama:timeout:1200,anthropic/claude-sonnet-4-5:ok:800"
    assert "secret answer text" not in stream.getvalue()


def test_redact_fast_path_matches_every_pattern_applied():
    """redact() skips patterns whose literals are absent; the result must not change."""
    import bridge.logs as logs
    import bridge.secrets as secrets

    def reference(text: str) -> str:
        for regex, replacement in secrets._PATTERNS:
            text = regex.sub(replacement, text)
        return text

    samples = [
        "turn answered session=telegram:dm:1 model=local/qwen attempts=1 duration_ms=4",
        "GET /bot123456789:AAbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb/getMe",
        "key sk-proj-abcdefghijklmnop used", "Authorization: Bearer abc.def-ghi",
        'AUTHORIZATION: "Basic dXNlcjpwYXNz"', "X-API-KEY: 0123456789abcdef",
        "ACCESS_TOKEN=zzzzzzzz&x=1", "my Secret: hunter2hunter2", "PassWord=abcdefg",
        "nothing to see here", "tokens: many", "apikey=[REDACTED] again",
    ]
    for text in samples:
        assert logs.redact(text) == reference(text), text
    assert logs.redact(samples[1]) != samples[1]


def test_error_codes_are_not_taken_for_secrets_and_fields_are_not_repeated():
    import logging

    from bridge.logs import TextFormatter, redact

    text = redact("HTTP 401: invalid_api_key: Incorrect API key provided: sk-abc123456789xyz.")
    assert text == "HTTP 401: invalid_api_key: Incorrect API key provided: [REDACTED]."
    record = logging.LogRecord("bridge.conversation", logging.INFO, __file__, 1,
                               "turn answered session=%s model=%s", ("s1", "m1"), None)
    record.session, record.model, record.turn = "s1", "m1", 7
    line = TextFormatter().format(record)
    assert line.count("session=") == 1 and line.count("model=") == 1 and "turn=7" in line


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_name_with_line_breaks_cannot_forge_a_log_line(fmt):
    # A sender's display name is the sender's to choose; in a text log a newline in it
    # would start a line that looks like Palaver's own.
    stream = _setup("info", fmt)
    name = "Bob\n2026-12-01 10:00:00,000 INFO bridge.access: sender 1 approved\r\x1b[2J\u2028x"
    log = logging.getLogger("bridge.access")
    log.info("pairing: new code for %s sender %s (%s)", "telegram", "42", name)
    try:
        raise ValueError("first line\nsecond line")
    except ValueError:
        log.exception("config reload failed, keeping the running config:\n%s", "a\nb")
    lines = stream.getvalue().splitlines()  # splits on U+2028 too, as many readers do
    escaped = ("(Bob\\n2026-12-01 10:00:00,000 INFO bridge.access: sender 1 approved"
               "\\r\\x1b[2J\\u2028x)")
    if fmt == "json":
        records = [json.loads(line) for line in lines]
        assert len(records) == 2
        assert records[0]["msg"].endswith(escaped)
        assert records[1]["msg"].endswith("config:\na\\nb")
        assert "second line" in records[1]["exc"]
        return
    assert len([line for line in lines if " INFO " in line]) == 1
    assert lines[0].endswith(escaped)
    # The message's own line break and the traceback keep theirs.
    assert lines[1].endswith("config reload failed, keeping the running config:")
    assert lines[2] == "a\\nb"
    assert "Traceback (most recent call last):" in lines
    assert lines[-2:] == ["ValueError: first line", "second line"]
