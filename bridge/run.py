"""``palaver run`` and ``palaver chat``: the process around an :class:`~bridge.app.App`.

The command-line side of running Palaver: log set-up from the flags, the process lock,
local-model discovery when the config names no model, signal handling, and the console
loop of ``palaver chat`` (lines in, replies out, an exit status).  Which channels exist
is the composition root's business (:mod:`bridge.app`); this module never names one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from bridge.app import App, console_app, register_config_secrets
from bridge.cli import EXIT_FAILURE, EXIT_OK, EXIT_UNUSABLE
from bridge.commands import is_stop
from bridge.config.resolve import UnknownModelError
from bridge.config.schema import Config
from bridge.conversation import AcceptEvent, TurnEvent
from bridge.envelope import AcceptStatus
from bridge.lock import DataDirBusy, console_lock, run_lock
from bridge.ports import StoreUnavailable
from bridge.stdin import StdinLines
from bridge.store.records import STOPPED_REASON

if TYPE_CHECKING:
    from bridge.config.watch import LiveConfig

log = logging.getLogger(__name__)


def _setup_logging(args: Any, config: Config | None, *, default_level: str | None = None,
                   ) -> None:
    """Logging from ``--log-level`` / ``--log-format`` (they outrank the config, also on
    reload), else from the config."""
    from bridge.logs import set_log_flags, setup_logging_with_flags

    set_log_flags(getattr(args, "log_level", None) or default_level,
                  getattr(args, "log_format", None))
    setup_logging_with_flags(config.logging.level if config else "info",
                             config.logging.format if config else "text", stream=sys.stderr)


async def _prepare(config: Config, *, targets: Any = None,
                   ) -> tuple[Callable[[Config], Config] | None, str | None]:
    """Discovery when the config names no model: ``(adjust, None)`` or ``(None, error)``."""
    from bridge.discovery import DEFAULT_TARGETS, discover, hosted_fallbacks, needs_discovery
    from bridge.discovery import with_discovered as add

    if not needs_discovery(config):
        return None, None
    found = await discover(config, targets=targets or DEFAULT_TARGETS)
    if found.config is None:
        return None, found.explain()
    print(found.explain(), file=sys.stderr)
    local = found.local

    def adjust(cfg: Config) -> Config:
        return add(cfg, local, hosted_fallbacks(cfg)) if needs_discovery(cfg) else cfg

    return adjust, None


# --------------------------------------------------------------------------- run


def cmd_run(args: Any) -> int:
    """``palaver run``: every enabled channel, hot reload, graceful stop on SIGINT/SIGTERM."""
    from bridge.config.load import load_for_cli
    from bridge.config.watch import LiveConfig

    config, path = load_for_cli(args)  # a ConfigError is cli.main's to report
    _setup_logging(args, config)
    register_config_secrets(config)
    live = LiveConfig(config, path)
    return asyncio.run(_run(live, args))


async def _run(live: LiveConfig, args: Any, *, ready: Callable[[App], Any] | None = None) -> int:
    # SQLite: one process per data directory.  On PostgreSQL the processes row
    # (bridge.store.coord) says who runs, and several may share the store.
    lock = run_lock(live.current.data_dir) if _uses_sqlite(live.current) else None
    try:
        if lock is not None:
            lock.acquire()
    except DataDirBusy as exc:
        print(f"palaver: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    try:
        return await _run_locked(live, args, ready)
    finally:
        if lock is not None:
            lock.release()


def _uses_sqlite(config: Config) -> bool:
    """The store is SQLite in dataDir (no store.url / $PALAVER_DATABASE_URL); a bad URL
    counts as SQLite here: opening the store reports it."""
    from bridge.store import database_url
    from bridge.store.db import StoreError

    try:
        return database_url(config) is None
    except StoreError:
        return True


async def _run_locked(live: LiveConfig, args: Any, ready: Callable[[App], Any] | None) -> int:
    adjust, error = await _prepare(live.current, targets=getattr(args, "probe_targets", None))
    if error:
        print(error, file=sys.stderr)
        return EXIT_UNUSABLE
    app = App(live, adjust=adjust, serve_health=True)
    await app.start()
    if not app.channels:
        print("palaver: no channel is enabled — set channels.telegram or channels.whatsapp "
              "in the config (or try `palaver chat`)", file=sys.stderr)
        await app.stop(0)
        return EXIT_UNUSABLE
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):
            pass
    if ready is not None:
        ready(app)
    try:
        await stop.wait()
        log.info("stopping (signal received)")
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        await app.stop()
    return EXIT_OK


# --------------------------------------------------------------------------- chat


def cmd_chat(args: Any) -> int:
    """``palaver chat``: the console channel through the same pipeline.

    Not a terminal: one message per line, each final reply on stdout, diagnostics on
    stderr, exit at end of input (status 1 if a turn failed).  While an answer is being
    written, a ``/stop`` line stops it; other lines wait for their turn.
    """
    from bridge.config.load import load_for_cli

    config, _path = load_for_cli(args)  # a ConfigError is cli.main's to report
    _setup_logging(args, config, default_level="warning")
    register_config_secrets(config)
    return asyncio.run(chat(config, session=getattr(args, "session", None) or "operator",
                            model=getattr(args, "model", None),
                            probe_targets=getattr(args, "probe_targets", None)))


async def chat(config: Config, *, session: str = "operator", model: str | None = None,
               stdin: Any = None, stdout: Any = None, interactive: bool | None = None,
               probe_targets: Any = None) -> int:
    """Run a console chat over ``stdin``/``stdout``; returns the exit status.

    Ctrl-C (SIGINT) ends it at once, also while waiting for input: a running turn gets
    a second to finish, else it is answered the next time this session is opened.
    """
    lock = console_lock(config.data_dir, session)
    try:
        lock.acquire()
    except DataDirBusy as exc:
        print(f"palaver: {exc}; or pick another name with --session", file=sys.stderr)
        return EXIT_UNUSABLE
    try:
        return await _chat_locked(config, session=session, model=model, stdin=stdin,
                                  stdout=stdout, interactive=interactive,
                                  probe_targets=probe_targets)
    finally:
        lock.release()


async def _chat_locked(config: Config, *, session: str, model: str | None, stdin: Any,
                       stdout: Any, interactive: bool | None, probe_targets: Any) -> int:
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    if interactive is None:
        interactive = bool(getattr(stdin, "isatty", lambda: False)())
    adjust, error = await _prepare(config, targets=probe_targets)
    if error:
        print(error, file=sys.stderr)
        return EXIT_UNUSABLE
    effective = adjust(config) if adjust else config
    override = None
    if model:
        try:
            override = effective.resolve_ref(model)
        except UnknownModelError as exc:
            print(f"palaver: --model: {exc}", file=sys.stderr)
            return EXIT_UNUSABLE
    app, console = console_app(config, session=session, out=stdout, adjust=adjust)
    await app.start()
    key = str(console.make_inbound("").session_key)
    if override:
        app.core.set_model_override(key, override)
    failed: set[int] = set()

    def on_turn(event: AcceptEvent | TurnEvent) -> None:
        # A turn the operator stopped is what they asked for, not a failure.
        if (isinstance(event, TurnEvent) and event.session_key == key and not event.answered
                and event.reason != STOPPED_REASON):
            failed.update(event.message_ids)

    app.core.add_observer(on_turn)
    interrupted = False
    lines = _ChatLines(StdinLines(stdin))

    async def submit(text: str) -> bool:
        """Hand one line to the core; False (said on stderr) when it was not accepted."""
        try:
            _inbound, status = await console.submit(text)
        except StoreUnavailable as exc:
            # Nothing was stored: the operator still has the line and can send it again.
            print(f"palaver: message not stored ({exc}); send it again once the store "
                  "can be written", file=sys.stderr)
            return False
        if status is not AcceptStatus.ACCEPTED:
            print(f"palaver: message not accepted ({status})", file=sys.stderr)
            return False
        return True

    failures = 0
    try:
        await app.core.wait_idle()  # anything recovered from an earlier run
        if interactive:
            print("Palaver chat — /help for commands, /stop stops an answer, Ctrl-D to "
                  "quit.", file=sys.stderr)
        while True:
            if interactive:
                print("you> ", end="", file=sys.stderr, flush=True)
            line = await lines.next()
            if not line:
                break
            text = line.rstrip("\r\n")
            if not text.strip():
                continue
            if not await submit(text):
                failures += 1
                continue
            before = len(failed)
            # A /stop typed while the answer is written goes to the core at once.
            while stop := await lines.while_busy(app.core.wait_idle()):
                if not await submit(stop):
                    failures += 1
            if len(failed) > before:
                failures += 1
    except asyncio.CancelledError:
        interrupted = True  # Ctrl-C: asyncio.run turns this into KeyboardInterrupt (130)
        if interactive:
            print("", file=sys.stderr)
        raise
    finally:
        lines.close()
        await app.stop(1.0 if interrupted else None)
    return EXIT_FAILURE if failures else EXIT_OK


class _ChatLines:
    """The console's input while turns run: lines read ahead are kept in order, and a
    ``/stop`` read while a turn runs is handed over at once (see :meth:`while_busy`).

    A read in progress is never cancelled between turns (a stream read in a worker thread
    would lose its line): it is kept for the next call."""

    def __init__(self, lines: StdinLines) -> None:
        self._lines = lines
        self._held: deque[str] = deque()
        self._reading: asyncio.Task[str] | None = None
        self._eof = False

    def _read(self) -> asyncio.Task[str]:
        if self._reading is None:
            self._reading = asyncio.ensure_future(self._lines.readline())
        return self._reading

    async def next(self) -> str:
        """The next line to submit ("" at end of input)."""
        if self._held:
            return self._held.popleft()
        if self._eof:
            return ""
        line = await self._read()
        self._reading = None
        if not line:
            self._eof = True
        return line

    async def while_busy(self, idle: Awaitable[None]) -> str:
        """Wait for ``idle`` (the core's ``wait_idle()``) while reading ahead; returns at
        once with a ``/stop`` line read meanwhile (submit it, then call again), or ``""``
        once idle.  Other lines are held for :meth:`next`, in order."""
        waiting = asyncio.ensure_future(idle)
        try:
            while not waiting.done():
                if self._eof:
                    await waiting
                    break
                reading = self._read()
                await asyncio.wait({waiting, reading}, return_when=asyncio.FIRST_COMPLETED)
                if not reading.done():
                    continue
                self._reading = None
                line = reading.result()
                if not line:
                    self._eof = True
                elif is_stop(line.strip()):
                    return line.rstrip("\r\n")
                else:
                    self._held.append(line)
            return ""
        finally:
            if not waiting.done():
                waiting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await waiting

    def close(self) -> None:
        if self._reading is not None and not self._reading.done():
            self._reading.cancel()
        self._lines.close()
