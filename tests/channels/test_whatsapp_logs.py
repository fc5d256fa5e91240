"""Issue 14 item 12 (output): where neonize's and whatsmeow's lines go.

whatsmeow logs through neonize's log callback into Python loggers ``whatsmeow.*``, so
Palaver's redacting handler prints them; the Go library's own ``fmt.Println`` lines go
to file descriptor 1 past Python altogether (the README says so; shown here on the
shipped library).
"""

from __future__ import annotations

import ctypes
import importlib
import inspect
import io
import logging
import subprocess
import sys

import pytest

from bridge.cli import main as palaver_main
from bridge.logs import REDACTED, clear_secrets, register_secret, setup_logging
from channels.whatsapp import login
from channels.whatsapp.client import NeonizeClient
from tests.channels.test_whatsapp_executor import live_client
from tests.channels.test_whatsapp_login import linking_fake
from tests.fakes.neonize_fake import install_bounded

SECRET = "correct-horse-battery-staple"


@pytest.fixture
async def go(monkeypatch):
    """The fake Go library (tests/fakes/neonize_fake.py)."""
    fake = install_bounded(monkeypatch)
    yield fake
    fake.release()


@pytest.fixture(autouse=True)
def _restore_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    neonize_log = logging.getLogger("neonize.utils.log")
    neonize_level = neonize_log.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    neonize_log.setLevel(neonize_level)
    clear_secrets()


def whatsmeow_logs(module: str, level: str, message: str) -> None:
    """What Go does for each whatsmeow log line: hand a LogEntry to neonize's callback."""
    from neonize.proto.Neonize_pb2 import LogEntry

    # (neonize.utils re-exports a logger named ``log``, hiding the module of that name)
    neonize_log = importlib.import_module("neonize.utils.log")
    data = LogEntry(Name=module, Level=level, Message=message).SerializeToString()
    buffer = ctypes.create_string_buffer(data, len(data))
    neonize_log.log_whatsmeow(ctypes.addressof(buffer), len(data))
    neonize_log._log_queue.join()  # neonize's log thread has emitted it


def test_whatsmeow_log_lines_reach_palavers_handler_redacted():
    stream = io.StringIO()
    setup_logging("info", "text", stream=stream)
    register_secret(SECRET)
    whatsmeow_logs("Client", "WARN", f"Failed to send usync query with {SECRET}")
    out = stream.getvalue()
    assert "whatsmeow.Client" in out and "Failed to send usync query" in out
    assert REDACTED in out and SECRET not in out


def test_installed_neonize_gives_go_its_loggers_level_and_a_log_callback():
    from neonize.aioze.client import NewAClient

    source = inspect.getsource(NewAClient.connect_with_proxy)
    assert "LogLevel.from_logging(log.level).level" in source
    assert "func_callback_bytes2(log_whatsmeow)" in source


async def test_connect_asks_go_for_warnings_and_keeps_an_operators_level(tmp_path, go):
    from neonize.utils.enum import LogLevel

    neonize_log = logging.getLogger("neonize.utils.log")
    neonize_log.setLevel(logging.NOTSET)  # unset: neonize would pass "" (Go's default)
    client = await live_client(tmp_path, go)
    await client.close()
    assert LogLevel.from_logging(neonize_log.level).level == b"WARN"
    neonize_log.setLevel(logging.DEBUG)  # an operator's choice is kept
    client = NeonizeClient(tmp_path / "data" / "whatsapp" / "session.db")
    await client.connect()
    await client.close()
    assert neonize_log.level == logging.DEBUG


def test_login_command_logs_through_palavers_redacting_handler(tmp_path, monkeypatch,
                                                               capsys):
    (tmp_path / "palaver.json5").write_text(f'{{ dataDir: "{tmp_path / "pd"}" }}')
    monkeypatch.setattr(login, "NeonizeClient", lambda _path: linking_fake("2@cli"))
    assert palaver_main(["whatsapp", "login", "--config", str(tmp_path / "palaver.json5")
                         ]) == 0
    # neonize's basicConfig handler (plain, unredacted) is gone; Palaver's is in place.
    root = logging.getLogger()
    assert not [h for h in root.handlers if type(h) is logging.StreamHandler]
    register_secret(SECRET)
    capsys.readouterr()
    whatsmeow_logs("Client", "WARN", f"pairing: {SECRET}")
    whatsmeow_logs("Client", "INFO", "not shown: login logs warnings and above")
    err = capsys.readouterr().err
    assert f"pairing: {REDACTED}" in err and SECRET not in err and "not shown" not in err


@pytest.mark.skipif(sys.platform != "linux", reason="neonize ships a linux .so here")
def test_the_go_library_prints_to_the_process_stdout_past_python(tmp_path):
    """Documented, not captured: Go's fmt.Println writes to fd 1, not to sys.stdout."""
    script = (
        "import contextlib, io, sys\n"
        "from neonize.aioze import client as c\n"
        "seen = io.StringIO()\n"
        "with contextlib.redirect_stdout(seen), contextlib.redirect_stderr(seen):\n"
        "    c.gocode.SendMessage(b'palaver-test', b'\\xff\\xff', 2, b'', 0)\n"
        "sys.__stderr__.write('python saw: %r' % seen.getvalue())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "SendMessage: Error unmarshaling JID" in done.stdout  # the process's fd 1
    assert "python saw: ''" in done.stderr  # Python's stdout never saw it
