"""The composition root, `palaver chat` / `palaver run`, and no-config discovery, through the
real ModelRouter against FakeModelServer on 127.0.0.1."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import sys
from pathlib import Path

import pytest

from bridge import app as app_mod
from bridge import lock as lock_mod
from bridge import run as run_mod
from bridge.app import App
from bridge.config.load import load_config, load_config_text
from bridge.discovery import ProbeTarget, discover
from bridge.run import chat
from bridge.stdin import StdinLines
from tests.core.helpers import RecordingChannel, dm
from tests.fakes.model_server import FakeModelServer

REPO = Path(__file__).resolve().parents[2]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config_text(tmp_path, server: FakeModelServer, **extra) -> str:
    data = {
        "dataDir": str(tmp_path / "data"),
        "health": {"enabled": False},
        "models": {"mode": "replace", "providers": {
            "fake": {"baseUrl": server.base_url, "api": "openai-completions",
                     "models": [{"id": "fake-model"}]},
            "spare": {"baseUrl": server.base_url, "api": "openai-responses",
                      "models": [{"id": "spare-model"}]}}},
        "agents": {"defaults": {"model": {"primary": "fake/fake-model",
                                          "fallbacks": ["spare/spare-model"]},
                                "timeouts": {"firstTokenSeconds": 2, "totalSeconds": 5}}},
        "channels": {"telegram": {"dmPolicy": "open", "allowFrom": ["*"]}},
    }
    data.update(extra)
    return json.dumps(data)


@pytest.fixture
async def server():
    async with FakeModelServer() as s:
        yield s


async def test_app_round_trip_through_real_router(tmp_path, server):
    config = load_config_text(_config_text(tmp_path, server))
    channel = RecordingChannel()
    app = App(config, channels=[channel])
    await app.start()
    try:
        server.reply("Hi from the fake", reasoning="secret thoughts")
        assert await app.core.accept(dm("hello")) == "accepted"
        await app.core.wait_idle()
        assert channel.texts() == ["Hi from the fake"]
        body = server.requests[-1].json
        assert body["model"] == "fake-model"
        assert body["messages"][-1]["content"] in ("hello", [{"type": "text", "text": "hello"}])
        health = await app.health()
        assert health["store"]["ok"] and health["channels"]["telegram"]["connected"]
        assert app.media.root == config.data_dir / "media"
        # Fallback through the real router: the primary fails, the spare answers.
        server.error(500, "boom").reply("spare answer")
        await app.core.accept(dm("again"))
        await app.core.wait_idle()
        assert channel.texts()[-1] == "spare answer"
        assert server.requests[-1].path.endswith("/responses")
        text = app.metrics.render().decode()
        assert "telegram" in text
    finally:
        await app.stop()
    assert channel.stopped
    assert (await app.health())["store"]["ok"] is False


async def test_scripted_chat_prints_replies_and_exits_zero(tmp_path, server):
    config = load_config_text(_config_text(tmp_path, server))
    stdin = io.StringIO("hello\n\n/model spare/spare-model\nsecond line\n")
    stdout = io.StringIO()
    server.reply("first answer")
    code = await chat(config, stdin=stdin, stdout=stdout, interactive=False)
    assert code == 0
    lines = stdout.getvalue().splitlines()
    assert lines[0] == "first answer"
    assert "spare/spare-model" in lines[1]
    assert lines[2] == "echo: second line"
    assert server.requests[-1].path.endswith("/responses")  # the /model choice


async def test_scripted_chat_exits_nonzero_when_a_turn_fails(tmp_path, server):
    config = load_config_text(_config_text(tmp_path, server))
    server.error(500, "down").error(500, "down too")
    stdout = io.StringIO()
    code = await chat(config, stdin=io.StringIO("anyone?\n"), stdout=stdout,
                      interactive=False, model="spare/spare-model")
    assert code == 1
    assert "unavailable" in stdout.getvalue()
    assert await chat(config, stdin=io.StringIO(""), stdout=io.StringIO(),
                      interactive=False, model="nope/x") == 2


async def test_scripted_chat_survives_a_store_outage_and_says_what_was_not_stored(
        tmp_path, server, monkeypatch, capsys):
    from bridge.store import Store
    from bridge.store.db import StoreUnavailableError

    config = load_config_text(_config_text(tmp_path, server))
    real = Store.record_inbound
    calls = {"n": 0}

    async def full_once(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] <= 3:  # the door's own retries for the first line all fail
            raise StoreUnavailableError("disk full")
        return await real(self, *args, **kwargs)

    monkeypatch.setattr(Store, "record_inbound", full_once)
    server.reply("second answer")
    stdout = io.StringIO()
    code = await chat(config, stdin=io.StringIO("lost?\nsecond\n"), stdout=stdout,
                      interactive=False)
    assert code == 1  # one line was not stored
    assert stdout.getvalue().splitlines() == ["second answer"]
    assert "message not stored" in capsys.readouterr().err


async def test_palaver_chat_subprocess(tmp_path, server):
    path = tmp_path / "palaver.json5"
    path.write_text(_config_text(tmp_path, server))
    server.reply("one").reply("two")
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_PROXY": "127.0.0.1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "chat", "-c", str(path), "--session", "script",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env, cwd=str(tmp_path))
    out, err = await asyncio.wait_for(proc.communicate(b"first\nsecond\n"), 60)
    assert proc.returncode == 0, err.decode()
    assert out.decode().splitlines() == ["one", "two"]


async def test_discovery_uses_first_local_server_with_hosted_fallback(server):
    server.models = ["nomic-embed-text", "qwen3:8b"]
    targets = (ProbeTarget("lmstudio", "LM Studio", _closed_port()),
               ProbeTarget("ollama", "Ollama", server.port))
    base = load_config(None, env={"ANTHROPIC_API_KEY": "sk-ant-test-123456789"})
    found = await discover(base, targets=targets, timeout_s=1)
    assert found.local is not None and found.local.target.provider_id == "ollama"
    sel = found.config.default_selection()
    assert sel.primary == "ollama/qwen3:8b"  # embedding models skipped
    assert sel.fallbacks == ("anthropic/claude-sonnet-4-5",)
    model = found.config.model("ollama/qwen3:8b")
    assert model.base_url == server.base_url and model.api == "openai-completions"
    text = found.explain()
    assert "connection refused" in text and "Using Ollama" in text


async def test_discovery_says_what_it_tried_when_nothing_answers():
    hang = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = hang.sockets[0].getsockname()[1]
    try:
        targets = (ProbeTarget("lmstudio", "LM Studio", _closed_port()),
                   ProbeTarget("vllm", "vLLM", port))
        found = await discover(load_config(None, env={}), targets=targets, timeout_s=0.3)
    finally:
        hang.close()
    assert found.config is None
    text = found.explain()
    assert "LM Studio" in text and "connection refused" in text
    assert f"127.0.0.1:{port}/v1/models" in text and "no answer within" in text
    assert "To configure one" in text and "$ANTHROPIC_API_KEY" in text


async def test_chat_without_config_discovers_local_server(tmp_path, server):
    targets = (ProbeTarget("localai", "LocalAI", server.port),)
    config = load_config(None, env={})
    config = config.model_copy(update={"dataDir": str(tmp_path / "d")})
    stdout = io.StringIO()
    code = await chat(config, stdin=io.StringIO("ping\n"), stdout=stdout,
                      interactive=False, probe_targets=targets)
    assert code == 0 and stdout.getvalue() == "echo: ping\n"
    assert server.requests[-1].json["model"] == "fake-model"


async def test_run_stops_gracefully_on_sigterm(tmp_path, server, monkeypatch):
    import threading

    from bridge.config.watch import LiveConfig

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers need the main thread")

    path = tmp_path / "palaver.json5"
    path.write_text(_config_text(tmp_path, server))
    channel = RecordingChannel()
    monkeypatch.setattr(app_mod, "build_channels", lambda *a, **k: [channel])
    server.reply("slow answer", delay=0.1)
    seen = {}

    def ready(app):
        async def drive():
            await app.core.accept(dm("during shutdown"))
            await asyncio.sleep(0.02)  # the turn is running
            os.kill(os.getpid(), signal.SIGTERM)
        seen["task"] = asyncio.get_running_loop().create_task(drive())

    live = LiveConfig(load_config(path), path)
    code = await run_mod._run(live, object(), ready=ready)
    await seen["task"]
    assert code == 0
    assert channel.texts() == ["slow answer"]  # the running turn finished first
    assert channel.stopped


# ----------------------------------------------------------- console sessions, locks


async def _interrupted_console_turn(config, session: str, text: str) -> None:
    """Leave a console message of ``session`` processing, as a killed `palaver chat` does."""
    from bridge.store import Store
    from channels.console import ConsoleChannel

    store = await Store.open_in(config.data_dir)
    try:
        inbound = ConsoleChannel(session=session).make_inbound(text)
        await store.record_inbound(inbound)
        assert await store.claim_next(str(inbound.session_key)) is not None
    finally:
        await store.close()


async def test_chat_session_only_recovers_its_own_console_session(tmp_path, server):
    config = load_config_text(_config_text(tmp_path, server))
    await _interrupted_console_turn(config, "alice", "alice's secret question")
    out_bob = io.StringIO()
    assert await chat(config, session="bob", stdin=io.StringIO("hi from bob\n"),
                      stdout=out_bob, interactive=False) == 0
    assert out_bob.getvalue() == "echo: hi from bob\n"  # nothing of alice's
    from bridge.store import Store

    store = await Store.open_in(config.data_dir)
    try:
        counts = await store.count_by_status()
        assert counts["in:processing"] == 1  # bob's process left it alone
    finally:
        await store.close()
    out_alice = io.StringIO()
    assert await chat(config, session="alice", stdin=io.StringIO(""), stdout=out_alice,
                      interactive=False) == 0
    assert out_alice.getvalue() == "echo: alice's secret question\n"


async def test_console_channel_owns_only_its_session():
    from bridge.envelope import ChatAddress, ChatKind
    from channels.console import ConsoleChannel

    bob = ConsoleChannel(session="bob")
    assert bob.owns(ChatAddress("console", "default", "bob", ChatKind.DIRECT))
    assert not bob.owns(ChatAddress("console", "default", "alice", ChatKind.DIRECT))
    assert RecordingChannel().owns(ChatAddress("telegram", "default", "x",
                                               ChatKind.DIRECT))  # default: all


async def test_second_run_on_one_data_dir_is_refused(tmp_path, server, capsys):
    from bridge.config.watch import LiveConfig

    path = tmp_path / "palaver.json5"
    path.write_text(_config_text(tmp_path, server))
    config = load_config(path)
    lock = lock_mod.run_lock(config.data_dir)
    lock.acquire()  # a `palaver run` holds the data dir
    try:
        code = await run_mod._run(LiveConfig(config, path), object())
        assert code == 2
        err = capsys.readouterr().err
        assert "already in use by process" in err and str(os.getpid()) in err
        # `palaver chat` may run beside it: it touches only its own console session.
        assert await chat(config, session="side", stdin=io.StringIO("x\n"),
                          stdout=io.StringIO(), interactive=False) == 0
    finally:
        lock.release()
    # One console session cannot be open twice.
    held = lock_mod.console_lock(config.data_dir, "twice")
    held.acquire()
    try:
        assert await chat(config, session="twice", stdin=io.StringIO("x\n"),
                          stdout=io.StringIO(), interactive=False) == 2
        assert "console session 'twice'" in capsys.readouterr().err
    finally:
        held.release()
    assert await chat(config, session="twice", stdin=io.StringIO(""),
                      stdout=io.StringIO(), interactive=False) == 0


def test_store_errors_are_one_line_not_a_traceback(tmp_path, capsys):
    import sqlite3

    from bridge import cli

    data = tmp_path / "data"
    data.mkdir()
    conn = sqlite3.connect(data / "palaver.db")
    conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, name TEXT, "
                 "applied_at REAL)")
    conn.execute("INSERT INTO schema_version VALUES (999, 'future', 0)")
    conn.commit()
    conn.close()
    path = tmp_path / "palaver.json5"
    path.write_text(json.dumps({"dataDir": str(data)}))
    assert cli.main(["-c", str(path), "pairing", "list"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "schema version 999" in err and err.startswith("palaver: ")


async def test_secrets_are_registered_at_start_and_on_reload(tmp_path, server):
    from bridge.config.watch import LiveConfig
    from bridge.logs import clear_secrets, redact

    def text(key: str) -> str:
        data = json.loads(_config_text(tmp_path, server))
        data["models"]["providers"]["fake"]["apiKey"] = key
        return json.dumps(data)

    path = tmp_path / "palaver.json5"
    path.write_text(text("first-secret-key-123456"))
    clear_secrets()
    app = App(LiveConfig(load_config(path), path), channels=[RecordingChannel()])
    await app.start()
    try:
        assert "first-secret-key-123456" not in redact("key=first-secret-key-123456")
        assert "second-secret-key-98765" in redact("second-secret-key-98765")
        path.write_text(text("second-secret-key-98765"))
        assert await app._live.reload()
        assert "second-secret-key-98765" not in redact("x second-secret-key-98765 y")
    finally:
        await app.stop()
        clear_secrets()


async def test_channel_that_connects_later_gets_its_queued_replies(tmp_path, server):
    from bridge.ports import SendError

    config = load_config_text(_config_text(tmp_path, server))

    class Connecting(RecordingChannel):
        """Like Telegram: start() returns at once, sends fail until connected."""

        async def start(self, sink) -> None:
            await super().start(sink)
            self.failures = [SendError("not running (connecting)", retryable=True)]
            self.connected = asyncio.Event()

        async def connect(self) -> None:
            self.failures = []
            ready = getattr(self.sink, "channel_ready", None)
            if ready is not None:
                ready(self)

    channel = Connecting()
    app = App(config, channels=[channel])
    await app.start()
    try:
        server.reply("kept for later")
        await app.core.accept(dm("hello"))
        await app.core.wait_idle()
        assert channel.texts() == [] and channel.attempts == 1  # next retry in 5 s
        t0 = asyncio.get_running_loop().time()
        await channel.connect()
        for _ in range(300):
            if channel.texts():
                break
            await asyncio.sleep(0.01)
        assert channel.texts() == ["kept for later"]
        assert asyncio.get_running_loop().time() - t0 < 2  # not the 5 s backoff
    finally:
        await app.stop(0)


# ------------------------------------------------------------------------ Ctrl-C


async def test_stdin_lines_reads_a_pipe_and_cancels_at_once():
    read_fd, write_fd = os.pipe()
    reader_file = os.fdopen(read_fd, "r", encoding="utf-8")
    lines = StdinLines(reader_file)
    try:
        os.write(write_fd, b"one\ntw")
        assert await asyncio.wait_for(lines.readline(), 2) == "one\n"
        pending = asyncio.ensure_future(lines.readline())
        await asyncio.sleep(0.05)
        assert not pending.done()  # "tw" is not a line yet
        pending.cancel()  # what Ctrl-C does to `palaver chat`
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(pending, 1)
        os.write(write_fd, "o\nthré".encode())
        assert await asyncio.wait_for(lines.readline(), 2) == "two\n"
        os.close(write_fd)
        write_fd = -1
        assert await asyncio.wait_for(lines.readline(), 2) == "thré"  # last, unterminated
        assert await asyncio.wait_for(lines.readline(), 2) == ""
    finally:
        lines.close()
        reader_file.close()
        if write_fd >= 0:
            os.close(write_fd)


async def test_interactive_chat_exits_promptly_on_ctrl_c(tmp_path, server):
    import pty

    path = tmp_path / "palaver.json5"
    path.write_text(_config_text(tmp_path, server))
    server.reply("pong from the model")
    master, slave = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_PROXY": "127.0.0.1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "chat", "-c", str(path), stdin=slave, stdout=slave,
        stderr=slave, env=env, cwd=str(tmp_path), start_new_session=True)
    os.close(slave)
    loop = asyncio.get_running_loop()
    output = bytearray()
    got = asyncio.Event()

    def readable() -> None:
        try:
            output.extend(os.read(master, 65536))
        except OSError:
            loop.remove_reader(master)
        got.set()

    async def wait_for(text: bytes, seconds: float) -> None:
        deadline = loop.time() + seconds
        while text not in output:
            got.clear()
            await asyncio.wait_for(got.wait(), max(0.01, deadline - loop.time()))

    loop.add_reader(master, readable)
    try:
        await wait_for(b"you> ", 30)
        os.write(master, b"ping\n")
        await wait_for(b"pong from the model", 20)
        await wait_for(b"you> ", 5)  # waiting for input again
        await asyncio.sleep(0.1)
        t0 = loop.time()
        proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), 5)  # no Enter needed
        assert code == 130
        assert loop.time() - t0 < 4
    finally:
        loop.remove_reader(master)
        os.close(master)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert b"Traceback" not in output


async def test_reload_keeps_command_line_log_flags_and_names_restart_only_changes(
        tmp_path, server, monkeypatch, caplog):
    import argparse
    import logging

    from bridge.config.watch import LiveConfig
    from bridge.logs import JsonFormatter

    def text(**changes) -> str:
        data = json.loads(_config_text(tmp_path, server))
        data.update(changes)
        return json.dumps(data)

    path = tmp_path / "palaver.json5"
    path.write_text(text())
    config = load_config(path)
    run_mod._setup_logging(argparse.Namespace(log_level="debug", log_format="json"), config)

    def palaver_handler():
        return next(h for h in logging.getLogger().handlers
                    if isinstance(h.formatter, JsonFormatter))

    assert logging.getLogger().level == logging.DEBUG
    app = App(LiveConfig(config, path), channels=[RecordingChannel()])
    await app.start()
    try:
        # The file changes its logging section and two things only a restart applies.
        path.write_text(text(logging={"level": "warning", "format": "text"},
                             health={"port": 18999}))
        with caplog.at_level(logging.WARNING, logger="bridge.app"):
            assert await app._live.reload()
        assert palaver_handler() is not None  # still JSON, as --log-format said
        assert logging.getLogger().level == logging.DEBUG  # still --log-level debug
        warning = [r.getMessage() for r in caplog.records if "after a restart" in r.getMessage()]
        assert warning and "health" in warning[0]
    finally:
        await app.stop()
        from bridge.logs import set_log_flags, setup_logging
        set_log_flags(None, None)
        setup_logging("info", "text")


async def test_an_owners_channel_model_command_writes_the_file_the_running_app_reads(
        tmp_path, server):
    # The App hands the core its config file and reload: an owner's
    # /model NAME --channel in a chat edits that file and applies it at once.
    from bridge.config.watch import LiveConfig

    path = tmp_path / "palaver.json5"
    data = json.loads(_config_text(tmp_path, server))
    data["channels"]["telegram"]["owners"] = ["42"]
    path.write_text("// the operator's file\n" + json.dumps(data, indent=2), "utf-8")
    channel = RecordingChannel()
    app = App(LiveConfig(load_config(path), path), channels=[channel])
    await app.start()
    try:
        assert await app.core.accept(dm("/model spare/spare-model --channel")) == "accepted"
        await app.core.wait_idle()
        assert "channels.telegram.model" in channel.texts()[-1]
        assert path.read_text("utf-8").startswith("// the operator's file\n")
        assert load_config(path).channels.telegram.model.primary == "spare/spare-model"
        assert app.config.channels.telegram.model.primary == "spare/spare-model"  # applied
        server.reply("from the spare")
        await app.core.accept(dm("hello", msg_id="m2"))
        await app.core.wait_idle()
        assert channel.texts()[-1] == "from the spare"
        assert server.requests[-1].path.endswith("/responses")  # the spare's API
    finally:
        await app.stop()
