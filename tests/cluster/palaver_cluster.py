"""Several real ``palaver run`` processes on one PostgreSQL store, for the cluster tests.

:class:`Cluster` writes one config per process (its own dataDir, health port and webhook
port; one ``store.url``; Telegram against the fake Bot API, in webhook mode or, with
``mode="polling"``, polling (only the leader of ``telegram/default:poll`` polls); the fake
model server; with ``whatsapp_server``, the WhatsApp channel too, its neonize connecting to
that fake WhatsApp (tests/fakes/whatsapp_server.py) through the launcher
tests/cluster/whatsapp_member.py; ``telegram=False`` leaves Telegram out), starts them as
subprocesses (``python -m bridge run``), waits until each one's
``/healthz`` answers 200, and stops (SIGTERM) or kills (SIGKILL) them.  :class:`Poster`
is the load balancer in front of them: it POSTs each update, with Telegram's secret
token header, to the process it is given and, when that one does not answer 200 (dead,
or refusing), to the next — as Telegram retries a webhook that failed.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.ops.app_helpers import free_port

REPO = Path(__file__).resolve().parents[2]
SECRET = "cluster-SECRET_token1"
HOOK = "/hook"


@dataclass
class Member:
    """One ``palaver run`` process of the cluster."""

    index: int
    config_path: Path
    health_port: int
    webhook_port: int
    log_path: Path
    proc: asyncio.subprocess.Process | None = None

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.webhook_port}{HOOK}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Cluster:
    tmp_path: Path
    pg_url: str
    bot_token: str
    api_root: str
    model_url: str
    lease_s: float = 3.0
    mode: str = "webhook"  # or "polling"
    telegram: bool = True
    # "host:port" of a FakeWhatsApp: the WhatsApp channel on, neonize faked to reach it
    whatsapp_server: str | None = None
    members: list[Member] = field(default_factory=list)

    def config(self, member: Member) -> dict[str, Any]:
        channels: dict[str, Any] = {}
        if self.telegram:
            channels["telegram"] = self.telegram_config(member)
        if self.whatsapp_server is not None:
            channels["whatsapp"] = {"dmPolicy": "open", "allowFrom": ["*"],
                                    "ackReaction": ""}
        return {
            "dataDir": str(self.tmp_path / f"p{member.index}" / "data"),
            "store": {"url": self.pg_url, "leaseSeconds": self.lease_s},
            "models": {"mode": "replace", "providers": {"local": {
                "baseUrl": self.model_url, "api": "openai-completions",
                "models": [{"id": "text", "contextWindow": 32000, "maxTokens": 1000}],
            }}},
            "agents": {"defaults": {"model": {"primary": "local/text"}}},
            "channels": channels,
            "health": {"enabled": True, "host": "127.0.0.1", "port": member.health_port},
        }

    def telegram_config(self, member: Member) -> dict[str, Any]:
        telegram: dict[str, Any] = {
            "botToken": self.bot_token, "apiRoot": self.api_root,
            "dmPolicy": "open", "allowFrom": ["*"], "streaming": "off", "ackReaction": ""}
        if self.mode == "webhook":
            telegram.update({
                "mode": "webhook", "webhookUrl": member.webhook_url,
                "webhookSecret": SECRET, "webhookHost": "127.0.0.1",
                "webhookPort": member.webhook_port, "webhookPath": HOOK})
        else:
            telegram["mode"] = self.mode
        return telegram

    def add(self) -> Member:
        index = len(self.members)
        base = self.tmp_path / f"p{index}"
        base.mkdir(parents=True, exist_ok=True)
        member = Member(index, base / "palaver.json", free_port(), free_port(),
                        base / "palaver.log")
        member.config_path.write_text(json.dumps(self.config(member)))
        self.members.append(member)
        return member

    def command(self) -> list[str]:
        """The process's command line before ``run -c <config>``."""
        if self.whatsapp_server is not None:
            return [sys.executable, "-m", "tests.cluster.whatsapp_member",
                    "--wa-server", self.whatsapp_server]
        return [sys.executable, "-m", "bridge"]

    async def start(self, member: Member, *, limit_s: float = 90.0) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO), "NO_PROXY": "127.0.0.1"}
        env.pop("PALAVER_DATABASE_URL", None)
        log = member.log_path.open("ab")
        try:
            member.proc = await asyncio.create_subprocess_exec(
                *self.command(), "run", "-c", str(member.config_path),
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                cwd=str(member.config_path.parent))
        finally:
            log.close()
        await self.wait_ready(member, limit_s=limit_s)

    async def wait_ready(self, member: Member, *, limit_s: float) -> dict[str, Any]:
        """Until the member's /healthz answers 200 (its cluster block alive).  With
        WhatsApp, until it answers with its cluster block alive, whatever the status: a
        standby's WhatsApp is not connected (503), and the leader's is not yet."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit_s
        url = f"http://127.0.0.1:{member.health_port}/healthz"
        async with aiohttp.ClientSession() as session:
            while True:
                assert member.proc is not None
                if member.proc.returncode is not None:
                    raise AssertionError(f"palaver run #{member.index} exited "
                                         f"{member.proc.returncode}:\n{member.log_tail()}")
                try:
                    async with session.get(url) as resp:
                        if resp.status == 200:
                            return dict(await resp.json())
                        if self.whatsapp_server is not None and resp.status == 503:
                            report = dict(await resp.json())
                            if report.get("cluster", {}).get("alive"):
                                return report
                except aiohttp.ClientError:
                    pass
                if loop.time() > deadline:
                    raise AssertionError(f"palaver run #{member.index} not ready in "
                                         f"{limit_s:.0f} s:\n{member.log_tail()}")
                await asyncio.sleep(0.2)

    async def health(self, member: Member) -> dict[str, Any]:
        url = f"http://127.0.0.1:{member.health_port}/healthz"
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            return dict(await resp.json())

    def kill(self, member: Member) -> None:
        assert member.proc is not None
        member.proc.send_signal(signal.SIGKILL)

    def freeze(self, member: Member) -> None:
        """SIGSTOP: it does nothing more, and its connections stay (not reaped before
        its lease runs out)."""
        assert member.proc is not None
        member.proc.send_signal(signal.SIGSTOP)

    async def frozen(self, member: Member, *, limit_s: float = 10.0) -> None:
        """:meth:`freeze`, and wait until the kernel has stopped it (state ``T`` in
        ``/proc/<pid>/stat``): from then on it reads nothing more."""
        self.freeze(member)
        stat = Path(f"/proc/{member.pid}/stat")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit_s
        while (await asyncio.to_thread(stat.read_text)).rpartition(")")[2].split()[0] \
                not in ("T", "t"):
            assert loop.time() < deadline, f"palaver run #{member.index} not stopped"
            await asyncio.sleep(0.005)

    def thaw(self, member: Member) -> None:
        """SIGCONT: a frozen member runs on."""
        assert member.proc is not None
        member.proc.send_signal(signal.SIGCONT)

    async def stop_all(self, *, limit_s: float = 30.0) -> None:
        for member in self.members:
            if member.proc is not None and member.proc.returncode is None:
                member.proc.send_signal(signal.SIGTERM)
        for member in self.members:
            if member.proc is None:
                continue
            try:
                await asyncio.wait_for(member.proc.wait(), limit_s)
            except TimeoutError:
                member.proc.kill()
                await member.proc.wait()


class Poster:
    """Telegram plus a round-robin load balancer: each update goes to the member it is
    given; an answer other than 200 (or no answer) sends it to the next member, and
    round after round until one takes it (``timeout`` s)."""

    def __init__(self, members: list[Member], *, timeout: float = 60.0) -> None:
        self.members = members
        self.timeout = timeout
        self.accepted_by: dict[int, int] = {}  # update_id -> member index
        self.failures = 0  # answers other than 200, and connections refused or cut
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Poster:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._session is not None
        await self._session.close()

    async def post(self, update: dict[str, Any], first: int) -> int:
        assert self._session is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET}
        n = len(self.members)
        attempt = 0
        while True:
            member = self.members[(first + attempt) % n]
            attempt += 1
            try:
                async with self._session.post(member.webhook_url, json=update,
                                              headers=headers) as resp:
                    await resp.read()
                    if resp.status == 200:
                        self.accepted_by[update["update_id"]] = member.index
                        return member.index
            except (aiohttp.ClientError, TimeoutError):
                pass
            self.failures += 1
            if loop.time() > deadline:
                raise AssertionError(f"update {update['update_id']} taken by no process "
                                     f"in {self.timeout:.0f} s")
            if attempt % n == 0:
                await asyncio.sleep(0.2)
