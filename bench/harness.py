"""Shared harness of the end-to-end benchmarks (not run by pytest).

The same pieces as ``tests/channels/test_telegram_e2e.py``: the fake Bot API
(:class:`tests.fakes.telegram_api.FakeBotAPI`) and a zero-latency fake model server
(:class:`tests.fakes.model_server.FakeModelServer`) on 127.0.0.1, the real
:class:`channels.telegram.TelegramChannel` and the real :class:`bridge.app.App` with its
SQLite store in a temporary data directory.

Palaver runs either in this process (:class:`InProcess`: one event loop shared with the
fakes and the driver, like the tests) or in a child process (:class:`Subprocess`: the
fakes and the driver stay here, so the child's memory, CPU and profile are Palaver's
alone).  Both offer the same small async API; the child is ``python bench/harness.py
child`` speaking JSON lines on stdin/stdout.

Only public APIs are used: ``TelegramChannel(config, media=, data_dir=)``,
``WhatsAppChannel(config, media=, data_dir=, client_factory=)``, ``App(config,
channels=, router=)``, ``start()``/``stop()``, ``App.core.add_observer`` and
``ModelRouter(config, clock=)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import io
import json
import os
import pstats
import socket
import sqlite3
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")


# ----------------------------------------------------------------------------- figures


def rss_kb(pid: int | str = "self") -> int:
    """Resident memory (VmRSS, kB) of a process, read from /proc."""
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc status")


def percentiles(samples: list[float], points: tuple[int, ...] = (50, 95, 99)) -> dict[str, float]:
    """``{"p50": ..., ...}`` of ``samples`` (linear interpolation, inclusive)."""
    if not samples:
        return {f"p{p}": float("nan") for p in points}
    if len(samples) == 1:
        return {f"p{p}": samples[0] for p in points}
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return {f"p{p}": cuts[p - 1] for p in points}


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def print_table(title: str, rows: list[tuple[str, Any]]) -> None:
    """A two-column table of figures."""
    print(title)
    width = max(len(name) for name, _ in rows) + 2
    for name, value in rows:
        shown = f"{value:.2f}" if isinstance(value, float) else str(value)
        print(f"  {name:<{width}}{shown:>12}")


def machine() -> dict[str, Any]:
    """Where the figures were taken."""
    import platform

    return {"nproc": os.cpu_count(), "python": platform.python_version(),
            "machine": platform.machine(),
            "loadavg_1m": round(os.getloadavg()[0], 2)}


# ----------------------------------------------------------------------------- config


def provider(base_url: str, model: str = "m", *, first_token_s: float | None = None) -> dict:
    """An openai-completions provider with one text model (and optional timeouts)."""
    out: dict[str, Any] = {"baseUrl": base_url, "api": "openai-completions",
                           "models": [{"id": model, "contextWindow": 32000,
                                       "maxTokens": 1000}]}
    if first_token_s is not None:
        out["timeouts"] = {"connectSeconds": 2, "firstTokenSeconds": first_token_s}
    return out


def config_dict(data_dir: Path, fake: Any, providers: dict[str, dict], *, primary: str,
                fallbacks: tuple[str, ...] = (), whatsapp: bool = False) -> dict:
    """A Palaver config (JSON-able dict): open DMs on Telegram, the given models."""
    channels: dict[str, Any] = {"telegram": {
        "botToken": fake.token, "apiRoot": fake.url, "dmPolicy": "open",
        "allowFrom": ["*"], "groupPolicy": "open"}}
    if whatsapp:
        channels["whatsapp"] = {"dmPolicy": "open", "allowFrom": ["*"]}
    return {
        "dataDir": str(data_dir),
        "models": {"mode": "replace", "providers": providers},
        "agents": {"defaults": {"model": {"primary": primary, "fallbacks": list(fallbacks)}}},
        "channels": channels,
        "health": {"enabled": False},
    }


# ----------------------------------------------------------------------------- Palaver


class InProcess:
    """Palaver in this process and event loop (what the tests do)."""

    def __init__(self, config: dict, *, whatsapp: bool = False, logging_on: bool = True,
                 offset_clock: bool = False, paced: bool = False) -> None:
        self.raw_config = config
        self.whatsapp = whatsapp
        self.paced = paced
        self.logging_on = logging_on
        self.offset_clock = offset_clock
        self.db_path = Path(config["dataDir"]) / "palaver.db"
        self.app: Any = None
        self.wa_client: Any = None
        self._router: Any = None
        self._offset = 0.0
        self._profiler: cProfile.Profile | None = None
        self._devnull: Any = None
        self.answered = 0  # inbound messages answered by a delivered reply
        self.failed = 0
        self.turns: list[dict] = []
        self._changed = asyncio.Event()

    async def start(self) -> dict:
        """Start App with Telegram (and WhatsApp on a recording client); wait until polling."""
        before = rss_kb()
        from bridge.app import App
        from bridge.config.schema import Config
        from bridge.media import MediaStore
        from bridge.models.router import ModelRouter
        from channels.telegram import TelegramChannel

        if self.logging_on:  # like `palaver run`: INFO, one line per turn (to /dev/null)
            from bridge.logs import setup_logging

            self._devnull = open(os.devnull, "w")  # noqa: ASYNC230 - /dev/null never blocks
            setup_logging("info", "text", stream=self._devnull)
        config = Config.model_validate(self.raw_config)
        data_dir = config.data_dir
        media = MediaStore(data_dir / "media")
        telegram = TelegramChannel(config.channels.telegram, media=media, data_dir=data_dir)
        if not self.paced:
            # Telegram's flood pacing (about one send a second per chat) would be most of
            # what a one-chat latency run measures; it is Telegram's limit, not Palaver's
            # cost.  --paced keeps it.
            from channels.telegram.pacing import Pacer

            telegram.pacer = Pacer(chat_interval=0, group_interval=0, overall_interval=0)
        channels: list[Any] = [telegram]
        if self.whatsapp:
            from channels.whatsapp import WhatsAppChannel
            from tests.channels.test_whatsapp_fake import FakeWhatsAppClient

            self.wa_client = FakeWhatsAppClient()
            channels.append(WhatsAppChannel(config.channels.whatsapp, media=media,
                                            data_dir=data_dir,
                                            client_factory=lambda _path: self.wa_client))
        router = None
        if self.offset_clock:
            # The router's cooldown clock, moved forward between failover samples so that
            # every sample meets the failing primary again (the default router skips it
            # for 30 s after a failure).
            router = self._router = ModelRouter(lambda: config,
                                                clock=lambda: time.monotonic() + self._offset)
        self.app = App(config, channels=channels, router=router)
        await self.app.start()
        self.app.core.add_observer(self._observe)
        deadline = time.monotonic() + 10
        while not all(c.health().connected for c in self.app.channels):
            if time.monotonic() > deadline:
                raise RuntimeError(f"channels not connected: {await self.app.health()}")
            await asyncio.sleep(0.01)
        return {"rss_before_palaver_kb": before, "rss_kb": rss_kb()}

    def _observe(self, event: Any) -> None:
        from bridge.conversation import TurnEvent

        if not isinstance(event, TurnEvent):
            return
        n = len(event.message_ids)
        if event.answered and event.delivered:
            self.answered += n
        else:
            self.failed += n
        self.turns.append({
            "messages": n, "answered": event.answered, "delivered": event.delivered,
            "duration_s": event.duration_s, "model_duration_s": event.model_duration_s,
            "attempts": [[a.model_ref, a.error_class.value if a.error_class else None,
                          a.duration_s, a.skipped] for a in event.attempts]})
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_answered(self, n: int, timeout: float = 120.0) -> dict:  # noqa: ASYNC109
        """Until ``n`` inbound messages were answered (or failed) in total."""
        async with asyncio.timeout(timeout):
            while self.answered + self.failed < n:
                await self._changed.wait()
        return await self.stats()

    async def stats(self) -> dict:
        """Counters, per-turn records and resident memory."""
        return {"answered": self.answered, "failed": self.failed, "turns": self.turns,
                "rss_kb": rss_kb(), "cpu_s": time.process_time()}

    async def advance_clock(self, seconds: float) -> None:
        """Move the router's clock (offset_clock) forward: cooldowns expire."""
        self._offset += seconds

    async def profile(self, on: bool, path: str | None = None) -> str:
        """Start cProfile, or stop it, dump to ``path`` and return the top functions."""
        if on:
            self._profiler = cProfile.Profile()
            self._profiler.enable()
            return ""
        assert self._profiler is not None
        self._profiler.disable()
        if path:
            self._profiler.dump_stats(path)
        return profile_summary(self._profiler)

    async def stop(self) -> None:
        """Stop App (no grace: the benchmarks wait for their answers first)."""
        if self.app is not None:
            await self.app.stop(grace=1)
        if self._router is not None:
            await self._router.aclose()
        if self._devnull is not None:
            import logging

            for handler in list(logging.getLogger().handlers):
                if getattr(handler, "stream", None) is self._devnull:
                    logging.getLogger().removeHandler(handler)
            self._devnull.close()


def profile_summary(profiler: cProfile.Profile, top: int = 25) -> str:
    """cProfile's top functions by cumulative and by own time."""
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)
    return out.getvalue()


class Subprocess:
    """Palaver in a child process (``python bench/harness.py child``); same API."""

    def __init__(self, config: dict, *, whatsapp: bool = False, logging_on: bool = True,
                 offset_clock: bool = False, paced: bool = False) -> None:
        self.raw_config = config
        self.db_path = Path(config["dataDir"]) / "palaver.db"
        self._hello = {"config": config, "whatsapp": whatsapp, "logging": logging_on,
                       "offset_clock": offset_clock, "paced": paced}
        self.proc: asyncio.subprocess.Process | None = None
        self.pid = 0

    async def _call(self, msg: dict, timeout: float = 60.0) -> dict:  # noqa: ASYNC109
        assert self.proc is not None and self.proc.stdin and self.proc.stdout
        self.proc.stdin.write((json.dumps(msg) + "\n").encode())
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            raise RuntimeError(f"the Palaver child exited ({await self.proc.wait()})")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"the Palaver child failed: {reply['error']}")
        return reply

    async def start(self) -> dict:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, str(HERE / "harness.py"), "child",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=2 ** 26)
        self.pid = self.proc.pid
        return await self._call(self._hello, timeout=60)

    async def wait_answered(self, n: int, timeout: float = 120.0) -> dict:  # noqa: ASYNC109
        return await self._call({"cmd": "wait_answered", "n": n, "timeout": timeout},
                                timeout + 10)

    async def stats(self) -> dict:
        return await self._call({"cmd": "stats"})

    async def advance_clock(self, seconds: float) -> None:
        await self._call({"cmd": "advance_clock", "seconds": seconds})

    async def profile(self, on: bool, path: str | None = None) -> str:
        return (await self._call({"cmd": "profile", "on": on, "path": path}))["summary"]

    async def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(Exception):
            await self._call({"cmd": "stop"}, timeout=30)
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


async def _child() -> int:
    """The child side of :class:`Subprocess`: JSON commands in, JSON answers out."""
    out = sys.stdout
    sys.stdout = sys.stderr  # nothing else may write on the protocol stream

    def answer(msg: dict) -> None:
        out.write(json.dumps(msg) + "\n")
        out.flush()

    async def read() -> dict | None:
        line = await asyncio.to_thread(sys.stdin.readline)
        return json.loads(line) if line.strip() else None

    hello = await read()
    if hello is None:
        return 1
    palaver = InProcess(hello["config"], whatsapp=hello["whatsapp"],
                        logging_on=hello["logging"], offset_clock=hello["offset_clock"],
                        paced=hello.get("paced", False))
    try:
        answer(await palaver.start())
    except Exception as exc:
        answer({"error": f"{type(exc).__name__}: {exc}"})
        return 1
    try:
        while (msg := await read()) is not None:
            cmd = msg["cmd"]
            try:
                if cmd == "wait_answered":
                    answer(await palaver.wait_answered(msg["n"], msg["timeout"]))
                elif cmd == "stats":
                    answer(await palaver.stats())
                elif cmd == "advance_clock":
                    await palaver.advance_clock(msg["seconds"])
                    answer({})
                elif cmd == "profile":
                    answer({"summary": await palaver.profile(msg["on"], msg.get("path"))})
                elif cmd == "stop":
                    await palaver.stop()
                    answer({"rss_kb": rss_kb()})
                    return 0
                else:
                    answer({"error": f"unknown command {cmd}"})
            except Exception as exc:
                answer({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        if palaver.app is not None and not palaver.app._stopped:  # stdin closed early
            await palaver.stop()
    return 0


# ----------------------------------------------------------------------------- checks


def verify_store(db_path: Path, fake: Any, expected: dict[int, int]) -> dict:
    """Every inbound message answered exactly once, checked in the store and the fake.

    ``expected``: chat id -> number of messages pushed.  Each inbound row must be
    ``answered`` and belong to a turn; each of those turns ``answered`` with exactly one
    reply row, ``sent`` and delivered, whose platform ids are sendMessage calls the fake
    received in that chat, each used once; no sendMessage without a reply row.
    """
    problems: list[str] = []
    with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as db:
        inbound = db.execute("SELECT chat_id, status, turn_id FROM messages "
                             "WHERE direction = 'in'").fetchall()
        turns = dict(db.execute("SELECT id, status FROM turns").fetchall())
        outs = db.execute("SELECT turn_id, chat_id, status, delivered, reply_platform_ids "
                          "FROM messages WHERE direction = 'out'").fetchall()
    per_chat: dict[int, int] = {}
    per_turn: dict[int, int] = {}
    for chat_id, status, turn_id in inbound:
        per_chat[int(chat_id)] = per_chat.get(int(chat_id), 0) + 1
        if status != "answered":
            problems.append(f"inbound in chat {chat_id} is {status}")
        if turn_id is None:
            problems.append(f"inbound in chat {chat_id} has no turn")
        else:
            per_turn[turn_id] = per_turn.get(turn_id, 0) + 1
    if per_chat != expected:
        problems.append(f"inbound per chat {per_chat} != pushed {expected}")
    replies: dict[int, int] = {}
    sent_ids = {(s.chat_id, s.message_id) for s in fake.sent}
    used: set[tuple[int, int]] = set()
    for turn_id, chat_id, status, delivered, ids in outs:
        replies[turn_id] = replies.get(turn_id, 0) + 1
        if status != "sent" or not delivered:
            problems.append(f"reply of turn {turn_id} is {status}, delivered={delivered}")
        for pid in filter(None, (ids or "").split(",")):
            chat, mid = (int(x) for x in pid.rsplit(":", 1))
            key = (chat, mid)
            if chat != int(chat_id) or key not in sent_ids:
                problems.append(f"reply of turn {turn_id}: {pid} not sent to chat {chat_id}")
            if key in used:
                problems.append(f"sendMessage {pid} claimed twice")
            used.add(key)
    for turn_id in per_turn:
        if turns.get(turn_id) != "answered":
            problems.append(f"turn {turn_id} is {turns.get(turn_id)}")
        if replies.get(turn_id) != 1:
            problems.append(f"turn {turn_id} has {replies.get(turn_id, 0)} replies")
    if len(used) != len(fake.sent):
        problems.append(f"{len(fake.sent)} sendMessage calls but {len(used)} stored reply ids")
    sizes = list(per_turn.values())
    return {"messages": len(inbound), "turns": len(per_turn), "replies_sent": len(fake.sent),
            "batched_turns": sum(1 for s in sizes if s > 1),
            "max_batch": max(sizes, default=0), "ok": not problems,
            "problems": problems[:10], "problem_count": len(problems)}


def sent_time(fake: Any, index: int) -> float:
    """When the fake received the ``index``-th sendMessage call (time.monotonic)."""
    seen = -1
    for call in fake.calls:
        if call.method == "sendMessage":
            seen += 1
            if seen == index:
                return call.time
    raise IndexError(index)


def send_times(fake: Any) -> list[tuple[int, float]]:
    """(chat_id, time) of every sendMessage call the fake received, in order."""
    return [(int(c.params["chat_id"]), c.time) for c in fake.calls
            if c.method == "sendMessage"]


if __name__ == "__main__":
    if sys.argv[1:] == ["child"]:
        sys.exit(asyncio.run(_child()))
    print("usage: python bench/harness.py child   (used by bench_e2e.py)", file=sys.stderr)
    sys.exit(2)
