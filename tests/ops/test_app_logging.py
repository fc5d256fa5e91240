"""Logging wired end to end: turns through a real App (and the real `palaver` CLI) with
Palaver's own handler (bridge.logs.setup_logging) writing to a buffer.

- message text and reply text stay out of every line at INFO and above unless
  ``logging.logMessageText`` is on, and are on the turn line when it is;
- an apiKey from the config never reaches a log line, even when a model server echoes
  it in its error body, because the CLI registers the config's secrets
  (bridge.app.register_config_secrets -> bridge.logs.register_secret), at start and
  after each hot reload.

The model clients already scrub *their own* key from the errors they raise
(bridge.models.errors.redact), so the servers here echo the *other* provider's key: only
the registration in bridge.logs can catch that, which is what is under test.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge.app import App
from bridge.cli import main
from bridge.config.load import load_config
from bridge.config.watch import LiveConfig
from bridge.logs import REDACTED, clear_secrets, redact, setup_logging
from tests.core.helpers import dm
from tests.fakes.model_server import FakeModelServer
from tests.ops.app_helpers import OpsChannel, answered

# Shapes no built-in redaction pattern recognises (not sk-…, no "api_key=" before it):
# only registration can hide them.
CONFIG_KEY = "pk-live-Quokka-93f1c0de7ab2e5"
RELOADED_KEY = "pk-live-Wombat-5d20aa71c3f94b"
SPARE_KEY = "pk-live-Numbat-0b6e2c9d8a7f31"

TEXT = "my cat Zanzibar-4471 ate the homework"
REPLY = "tell Zanzibar-4471 it is grounded, reply 8812"


@pytest.fixture(autouse=True)
def _restore_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    noisy = {n: logging.getLogger(n).level
             for n in ("httpx", "httpcore", "aiohttp.access", "telegram.request", "hpack",
                       "aiosqlite")}
    # aiosqlite's debug lines (every statement, the schema included) only bloat a failure.
    logging.getLogger("aiosqlite").setLevel(logging.INFO)
    clear_secrets()
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, lvl in noisy.items():
        logging.getLogger(name).setLevel(lvl)
    clear_secrets()


@pytest.fixture
async def server() -> AsyncIterator[FakeModelServer]:
    async with FakeModelServer() as s:
        yield s


def config_data(tmp_path: Path, server: FakeModelServer | str, *, log_text: bool = False,
                key: str = CONFIG_KEY) -> dict:
    """Two providers with apiKeys, on ``server`` (or a base URL), JSON logs at debug."""
    base_url = server if isinstance(server, str) else server.base_url
    return {
        "dataDir": str(tmp_path / "data"),
        "health": {"enabled": False},
        "models": {"mode": "replace", "providers": {
            "fake": {"baseUrl": base_url, "api": "openai-completions",
                     "apiKey": key, "models": [{"id": "fake-model"}]},
            "spare": {"baseUrl": base_url, "api": "openai-responses",
                      "apiKey": SPARE_KEY, "models": [{"id": "spare-model"}]},
        }},
        "agents": {"defaults": {"model": {"primary": "fake/fake-model",
                                          "fallbacks": ["spare/spare-model"]},
                                "timeouts": {"firstTokenSeconds": 3, "totalSeconds": 5}}},
        "channels": {"telegram": {"dmPolicy": "open", "allowFrom": ["*"]}},
        "logging": {"level": "debug", "format": "json", "logMessageText": log_text},
    }


def write_config(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data, indent=2))
    return path


_TEXT_HEAD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<level>[A-Z]+) ")


def records(output: str, fmt: str) -> list[tuple[str, str]]:
    """(level lower-case, the whole record as printed) for every record in ``output``."""
    out: list[tuple[str, str]] = []
    for line in output.splitlines():
        if not line.strip():
            continue
        if fmt == "json":
            obj = json.loads(line)  # every line is one JSON object
            out.append((obj["level"], line))
            continue
        head = _TEXT_HEAD.match(line)
        if head:
            out.append((head.group("level").lower(), line))
        else:  # a traceback line belongs to the record above
            assert out, f"text log starts with a continuation: {line!r}"
            out[-1] = (out[-1][0], out[-1][1] + "\n" + line)
    return out


# --------------------------------------------------------------------------- message text


@pytest.mark.parametrize("fmt", ["json", "text"])
@pytest.mark.parametrize("log_text", [False, True])
async def test_message_text_at_info_only_with_logMessageText(tmp_path, server, fmt, log_text):
    stream = io.StringIO()
    # debug: everything is printed; the check is on what the code logs at INFO and above.
    setup_logging("debug", fmt, stream=stream)
    config = load_config(write_config(tmp_path / "palaver.json5",
                                      config_data(tmp_path, server, log_text=log_text)))
    channel = OpsChannel()
    app = App(config, channels=[channel])
    await app.start()
    try:
        server.reply(REPLY)
        inbound = dm(TEXT)
        await app.core.accept(inbound)
        await answered(app, channel, 1)
    finally:
        await app.stop(grace=0)
    assert channel.sent[0].text == REPLY
    assert server.requests[0].last_user_text() == TEXT  # the text did go through

    recs = records(stream.getvalue(), fmt)
    marker = ('"logger": "bridge.conversation", "msg": "turn answered' if fmt == "json"
              else " bridge.conversation: turn answered")
    turn_lines = [text for level, text in recs if level == "info" and marker in text]
    assert len(turn_lines) == 1, recs  # the core's one line per turn
    (turn,) = turn_lines
    session = str(inbound.session_key)
    assert session in turn and "fake/fake-model" in turn
    loud = [text for level, text in recs if level != "debug"]
    leaked = [text for text in loud if "Zanzibar-4471" in text or "8812" in text]
    if not log_text:
        assert leaked == []
    else:
        assert leaked == [turn]
        if fmt == "json":
            fields = json.loads(turn)
            assert (fields["text_in"], fields["text_out"]) == (TEXT, REPLY)
            assert (fields["session"], fields["model"], fields["attempts"]) == (
                session, "fake/fake-model", 1)


# --------------------------------------------------------------------------- secrets


def _run_cli(argv: list[str], stdin_text: str, monkeypatch) -> tuple[int, str, str]:
    """``palaver ARGV`` in this process with its own stdin/stdout/stderr (call it in a
    worker thread: it runs its own event loop)."""
    stdin, stdout, stderr = io.StringIO(stdin_text), io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdin", stdin)
    monkeypatch.setattr(sys, "stdout", stdout)
    monkeypatch.setattr(sys, "stderr", stderr)
    code = main(argv)  # monkeypatch puts the real streams back after the test
    return code, stdout.getvalue(), stderr.getvalue()


@pytest.mark.parametrize("fmt", ["json", "text"])
async def test_config_api_key_never_logged_when_the_server_echoes_it(
        tmp_path, server, monkeypatch, fmt):
    """`palaver chat` (the real CLI wiring: load, set up logging, register the config's
    secrets, run a turn) at debug level; both models fail with bodies that quote a key
    from the config (a proxy echoing what it was configured with, say)."""
    path = write_config(tmp_path / "palaver.json5", config_data(tmp_path, server))
    server.error(502, f"upstream refused credentials {SPARE_KEY} for this route")
    server.error(401, f"key {CONFIG_KEY} is not allowed to use spare-model")
    code, out, err = await asyncio.to_thread(
        _run_cli, ["chat", "--config", str(path), "--log-level", "debug", "--log-format", fmt],
        "hello there\n", monkeypatch)

    assert code == 1  # the turn failed
    # The keys were really sent, and really echoed back.
    auth = [r.headers.get("authorization", "") for r in server.requests]
    assert auth == [f"Bearer {CONFIG_KEY}", f"Bearer {SPARE_KEY}"]
    recs = records(err, fmt)
    assert recs, "nothing was logged"
    failed = [text for level, text in recs if "turn failed" in text]
    assert len(failed) == 1 and REDACTED in failed[0]  # the echoed body, redacted
    for _level, text in recs:
        assert CONFIG_KEY not in text and SPARE_KEY not in text, text
    assert CONFIG_KEY not in out and SPARE_KEY not in out  # nor in what the chat shows


def test_palaver_run_registers_the_config_secrets_before_running(tmp_path, monkeypatch):
    """`palaver run` registers every provider key before anything runs (checked at the
    moment the run loop starts, then on a log line printed by it)."""
    from bridge import run as run_mod

    path = write_config(tmp_path / "palaver.json5",
                        config_data(tmp_path, "http://127.0.0.1:9/v1"))
    seen: dict[str, str] = {}

    async def fake_run(live, args, **_kw) -> int:
        seen["redacted"] = redact(f"a={CONFIG_KEY} b={SPARE_KEY}")
        logging.getLogger("bridge.app").warning("provider said %s / %s", CONFIG_KEY, SPARE_KEY)
        return 0

    monkeypatch.setattr(run_mod, "_run", fake_run)
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    assert main(["run", "--config", str(path), "--log-format", "json"]) == 0
    assert seen["redacted"] == f"a={REDACTED} b={REDACTED}"
    lines = [json.loads(x) for x in stderr.getvalue().splitlines() if x.strip()]
    said = [x for x in lines if x["msg"].startswith("provider said")]
    assert said and said[0]["msg"] == f"provider said {REDACTED} / {REDACTED}"


async def test_app_alone_redacts_its_config_keys(tmp_path, server):
    """An embedded App (no CLI: bench harness, tests) registers its config's secrets too."""
    stream = io.StringIO()
    setup_logging("info", "json", stream=stream)
    config = load_config(write_config(tmp_path / "palaver.json5",
                                      config_data(tmp_path, server)))
    channel = OpsChannel()
    app = App(config, channels=[channel])
    await app.start()
    try:
        server.error(502, f"upstream refused credentials {SPARE_KEY}")
        server.error(401, f"key {CONFIG_KEY} is not allowed")
        await app.core.accept(dm("hello"))
        await answered(app, channel, 1)
    finally:
        await app.stop(grace=0)
    logged = stream.getvalue()
    assert "turn failed" in logged and REDACTED in logged
    assert CONFIG_KEY not in logged and SPARE_KEY not in logged


async def test_an_api_key_that_arrives_by_hot_reload_is_redacted(tmp_path, server,
                                                                  monkeypatch):
    # The reload re-runs setup_logging on sys.stderr: capture that.
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    setup_logging("info", "json")
    path = write_config(tmp_path / "palaver.json5", config_data(tmp_path, server))
    live = LiveConfig(load_config(path), path, interval=3600)  # reloaded by hand below
    channel = OpsChannel()
    app = App(live, channels=[channel])
    await app.start()
    try:
        data = config_data(tmp_path, server)
        data["models"]["providers"]["spare"]["apiKey"] = RELOADED_KEY
        write_config(path, data)
        assert await live.reload()
        assert app.config.model("spare/spare-model").api_key.get_secret_value() == RELOADED_KEY
        server.error(502, f"upstream refused credentials {RELOADED_KEY}")
        server.error(401, "no")
        await app.core.accept(dm("hello"))
        await answered(app, channel, 1)
    finally:
        await app.stop(grace=0)
    assert server.requests[1].headers["authorization"] == f"Bearer {RELOADED_KEY}"
    assert "turn failed" in stream.getvalue()
    assert RELOADED_KEY not in stream.getvalue()
