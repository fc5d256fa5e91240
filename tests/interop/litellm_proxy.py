"""The real LiteLLM proxy as a child process on 127.0.0.1, offline, for the interop suite.

LiteLLM lives in its own virtualenv (``.ci/run`` builds ``.venv-litellm``) so its pins
never touch Palaver's; :func:`find_litellm` locates its ``litellm`` command and
:class:`LiteLLMProxy` writes a config, starts the proxy, waits for
``/health/liveliness`` and stops the whole process group.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

# The version the suite is written against (newer ones do not install from every index;
# see .ci/run).  Quirks observed with it are listed in tests/interop/test_litellm.py.
LITELLM_VERSION = "1.108.5"
MASTER_KEY = "sk-interop-master"
_REPO = Path(__file__).resolve().parents[2]


def find_litellm() -> str | None:
    """The ``litellm`` command: ``$PALAVER_LITELLM``, ``<repo>/.venv-litellm``, or PATH.

    An explicit ``PALAVER_LITELLM`` is returned even when it does not exist, so a wrong
    path fails loudly instead of falling back to something else.
    """
    explicit = os.environ.get("PALAVER_LITELLM")
    if explicit:
        return explicit
    local = _REPO / ".venv-litellm" / "bin" / "litellm"
    if local.is_file():
        return str(local)
    return shutil.which("litellm")


def free_port() -> int:
    """A 127.0.0.1 port free right now (the proxy binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Backend:
    """One ``model_list`` entry: the name clients send and the chat server behind it."""

    name: str
    model_id: str
    api_base: str  # http://127.0.0.1:PORT/v1


class LiteLLMProxy:
    """A running ``litellm --config …`` on 127.0.0.1 (use :meth:`start` / :meth:`stop`)."""

    def __init__(self, command: str, backends: list[Backend], workdir: Path) -> None:
        self.command = command
        self.backends = backends
        self.workdir = workdir
        self.port = free_port()
        self.log_path = workdir / "litellm.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict[str, object]:
        """The proxy config (JSON is valid YAML, so no YAML writer is needed)."""
        return {
            "model_list": [{
                "model_name": b.name,
                "litellm_params": {
                    "model": f"openai/{b.model_id}",  # any OpenAI-compatible chat server
                    "api_base": b.api_base,
                    "api_key": "sk-backend",
                    # /v1/responses is bridged to the backend's chat completions (without
                    # it LiteLLM forwards to the backend's own /v1/responses).
                    "use_chat_completions_api": True,
                },
            } for b in self.backends],
            "litellm_settings": {"drop_params": True},
            "general_settings": {"master_key": MASTER_KEY},
        }

    def env(self) -> dict[str, str]:
        """The child's environment: offline, no telemetry, its own HOME."""
        home = self.workdir / "home"
        home.mkdir(exist_ok=True)
        keep = ("PATH", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")
        env = {k: v for k, v in os.environ.items() if k in keep}
        env.update({
            "HOME": str(home),
            "LITELLM_MASTER_KEY": MASTER_KEY,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no cost-map fetch at start-up
            "LITELLM_OFFLINE_MODE": "true",  # newer releases' broader switch; harmless here
            "LITELLM_TELEMETRY_DISABLED": "true",
            "LITELLM_LOG": "INFO",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
            "PYTHONUNBUFFERED": "1",
        })
        return env

    def start(self, *, timeout: float = 60.0) -> LiteLLMProxy:
        """Start the proxy and wait (at most ``timeout`` s) until it answers its health
        check; RuntimeError with the log's tail when it exits or never gets healthy."""
        cfg = self.workdir / "litellm.yaml"
        cfg.write_text(json.dumps(self.config(), indent=2))
        log = self.log_path.open("wb")
        # Own session = own process group, so stop() ends its workers too.
        self._proc = subprocess.Popen(
            [self.command, "--config", str(cfg), "--host", "127.0.0.1",
             "--port", str(self.port), "--num_workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=self.env(), cwd=self.workdir, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"litellm exited with {self._proc.returncode}:\n"
                                   f"{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.root_url}/health/liveliness",
                                            timeout=2) as r:
                    if r.status == 200:
                        return self
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"litellm not healthy after {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM the proxy's process group, then SIGKILL whatever of it is left."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:  # a worker that outlived the leader, or a leader deaf to SIGTERM
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=5)

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` of the proxy's output (for failure messages)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])
