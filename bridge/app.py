"""The composition root: config, store, media, router, core and channels, and their lifecycle.

This is the one place that knows which channels exist (imported lazily, so the core never
loads a platform SDK).  ``palaver run`` and ``palaver chat`` are here too.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import hashlib
import logging
import os
import re
import signal
import sys
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bridge.config.schema import Config
from bridge.conversation import AcceptEvent, ConversationCore, TurnEvent
from bridge.envelope import AcceptStatus, SessionKey
from bridge.media import MediaStore
from bridge.store import Store

if TYPE_CHECKING:
    from bridge.config.watch import LiveConfig
    from bridge.metrics import Metrics
    from bridge.ports import Channel

log = logging.getLogger(__name__)


def build_channels(config: Config, *, media: MediaStore, data_dir: Path) -> list[Channel]:
    """The enabled platform channels (a channel that cannot be built is logged, skipped)."""
    out: list[Channel] = []
    specs = (("telegram", "channels.telegram", "TelegramChannel"),
             ("whatsapp", "channels.whatsapp", "WhatsAppChannel"))
    for name, module_name, class_name in specs:
        chan_config = getattr(config.channels, name)
        if chan_config is None or not chan_config.enabled:
            continue
        try:
            import importlib

            cls = getattr(importlib.import_module(module_name), class_name)
            out.append(cls(chan_config, media=media, data_dir=data_dir))
        except Exception as exc:
            log.error("channel %s cannot start: %s", name, exc)
    console = config.channels.console
    if console is not None and console.enabled:
        log.info("channels.console is used by `palaver chat`; `palaver run` does not read "
                 "the terminal")
    return out


class App:
    """Palaver, assembled.  ``await start()``, then ``await stop()``.

    ``config`` is a LiveConfig (hot reload) or a fixed Config.  ``channels=None`` builds
    the enabled ones from the config; ``router=None`` makes a ModelRouter.  ``adjust``
    rewrites every config version before use (``palaver`` uses it to add a discovered
    local model).
    """

    def __init__(
        self,
        config: LiveConfig | Config,
        *,
        channels: Sequence[Channel] | None = None,
        router: Any = None,
        metrics: Metrics | None = None,
        serve_health: bool = False,
        adjust: Callable[[Config], Config] | None = None,
    ) -> None:
        self._live = None if isinstance(config, Config) else config
        self._fixed = config if isinstance(config, Config) else None
        self._adjust = adjust
        self._adjusted: tuple[Config, Config] | None = None
        self._given_channels = list(channels) if channels is not None else None
        self._router = router
        self._owns_router = router is None
        self._metrics = metrics
        self._serve_health = serve_health
        self._channels: list[Channel] = []
        self._channel_errors: dict[str, str] = {}
        self._store: Store | None = None
        self._media: MediaStore | None = None
        self._core: ConversationCore | None = None
        self._health_server: Any = None
        self._started = False
        self._stopped = False
        self._applied: Config | None = None  # the file config last applied (hot reload)

    # -- accessors -----------------------------------------------------------------

    @property
    def config(self) -> Config:
        """The config in force (read it anew each time; hot reload swaps it)."""
        raw = self._live.current if self._live is not None else self._fixed
        assert raw is not None
        if self._adjust is None:
            return raw
        cached = self._adjusted
        if cached is None or cached[0] is not raw:
            cached = (raw, self._adjust(raw))
            self._adjusted = cached
        return cached[1]

    @property
    def store(self) -> Store:
        if self._store is None:
            raise RuntimeError("App is not started")
        return self._store

    @property
    def core(self) -> ConversationCore:
        if self._core is None:
            raise RuntimeError("App is not started")
        return self._core

    @property
    def media(self) -> MediaStore:
        if self._media is None:
            raise RuntimeError("App is not started")
        return self._media

    @property
    def router(self) -> Any:
        return self._router

    @property
    def metrics(self) -> Metrics | None:
        return self._metrics

    @property
    def channels(self) -> list[Channel]:
        return list(self._channels)

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store, start the channels, recover, resume; return once running."""
        if self._started:
            return
        self._started = True
        config = self.config
        register_config_secrets(config)
        data_dir = config.data_dir
        await asyncio.to_thread(data_dir.mkdir, parents=True, exist_ok=True)
        self._store = await Store.open_in(data_dir)
        self._media = MediaStore(data_dir / "media")
        if self._router is None:
            from bridge.models.router import ModelRouter

            self._router = ModelRouter(lambda: self.config)
        if self._metrics is None:
            try:
                from bridge.metrics import Metrics

                self._metrics = Metrics()
            except ImportError:  # pragma: no cover - metrics are optional
                self._metrics = None
        if self._given_channels is not None:
            channels = self._given_channels
        else:
            channels = build_channels(config, media=self._media, data_dir=data_dir)
        self._core = ConversationCore(self._store, lambda: self.config, self._router,
                                      media=self._media)
        if self._metrics is not None:
            self._core.add_observer(_metrics_observer(self._metrics))
            self._metrics.set_pending_source(self._core.pending_count)
        for channel in channels:
            self._core.attach(channel)
            try:
                await channel.start(self._core)
            except Exception as exc:
                label = _channel_label(channel)
                self._channel_errors[label] = f"failed to start: {exc}"
                log.error("channel %s failed to start: %s", label, exc)
            self._channels.append(channel)
        # Recovers and sends every started channel's queued replies (so no separate
        # channel_ready() here); a channel that connects only later calls
        # sink.channel_ready(itself) then.
        await self._core.start()
        if self._live is not None:
            self._applied = self._live.current
            self._live.subscribe(self._on_reload)
            await self._live.start()
        if self._serve_health and config.health.enabled and self._metrics is not None:
            from bridge.health import HealthServer

            self._health_server = HealthServer(config.health.host, config.health.port,
                                               check=self.health, metrics=self._metrics)
            try:
                await self._health_server.start()
            except OSError as exc:
                log.error("health endpoint not served: %s", exc)
                self._health_server = None
        log.info("palaver running: channels=%s data=%s",
                 ",".join(_channel_label(c) for c in self._channels) or "none", data_dir)

    async def stop(self, grace: float | None = None) -> None:
        """Stop taking new turns, let running ones finish within ``grace`` seconds
        (default agents.defaults.shutdownGraceSeconds), then close everything."""
        if not self._started or self._stopped:
            return
        self._stopped = True
        if self._core is not None:
            await self._core.stop(grace)
        for channel in self._channels:
            try:
                await channel.stop()
            except Exception:
                log.exception("channel %s did not stop cleanly", _channel_label(channel))
        if self._live is not None:
            await self._live.stop()
        if self._health_server is not None:
            with contextlib.suppress(Exception):
                await self._health_server.stop()
        if self._owns_router and self._router is not None:
            with contextlib.suppress(Exception):
                await self._router.aclose()
        if self._store is not None:
            await self._store.close()
        log.info("palaver stopped")

    async def health(self) -> dict[str, Any]:
        """``{"store": {"ok", "detail"}, "channels": {name: {"connected", "detail"}}}``."""
        report: dict[str, Any] = {"store": {"ok": False, "detail": "not started"},
                                  "channels": {}}
        if self._store is not None and not self._stopped:
            ok = await self._store.check_writable()
            report["store"] = {"ok": ok, "detail": "" if ok else "cannot write the database"}
        for channel in self._channels:
            label = _channel_label(channel)
            try:
                h = channel.health()
                entry = {"connected": h.connected, "detail": h.detail}
            except Exception as exc:
                entry = {"connected": False, "detail": f"health check failed: {exc}"}
            if label in self._channel_errors and not entry["connected"]:
                entry["detail"] = entry["detail"] or self._channel_errors[label]
            report["channels"][label] = entry
        if self._core is not None:
            report["pending"] = self._core.pending_count()
            report["busy_sessions"] = self._core.busy_sessions
        return report

    def _on_reload(self, new: Config) -> None:
        old, self._applied = self._applied, new
        register_config_secrets(self.config)
        if old is None or old.logging != new.logging:
            try:
                from bridge.logs import setup_logging

                # Flags given on the command line keep outranking the file.
                setup_logging(_LOG_FLAGS.get("level") or new.logging.level,
                              _LOG_FLAGS.get("format") or new.logging.format, stream=sys.stderr)
            except Exception:
                log.debug("log settings not re-applied", exc_info=True)
        if old is not None:
            later = restart_only_changes(old, new)
            if later:
                log.warning("config reloaded; these changes take effect after a restart: %s",
                            ", ".join(later))


def restart_only_changes(old: Config, new: Config) -> list[str]:
    """Dotted paths whose change a running Palaver cannot apply (they need a restart)."""
    changed: list[str] = []
    if old.dataDir != new.dataDir:
        changed.append("dataDir")
    if old.health != new.health:
        changed.append("health")
    for name, fields in (("telegram", ("enabled", "botToken", "tokenFile", "apiRoot", "mode",
                                       "webhookUrl", "webhookSecret", "webhookPath",
                                       "webhookHost", "webhookPort")),
                         ("whatsapp", ("enabled",))):
        before, after = getattr(old.channels, name), getattr(new.channels, name)
        if (before is None) != (after is None):
            changed.append(f"channels.{name}")
            continue
        if before is None:
            continue
        changed.extend(f"channels.{name}.{f}" for f in fields
                       if getattr(before, f) != getattr(after, f))
    return changed


def _channel_label(channel: Channel) -> str:
    account = getattr(channel, "account", "default")
    return channel.name if account == "default" else f"{channel.name}:{account}"


def _metrics_observer(metrics: Metrics) -> Callable[[AcceptEvent | TurnEvent], None]:
    def observe(event: AcceptEvent | TurnEvent) -> None:
        if isinstance(event, AcceptEvent):
            if event.status is AcceptStatus.DUPLICATE:
                return
            metrics.message_received(event.channel)
            if event.status in (AcceptStatus.REFUSED, AcceptStatus.IGNORED):
                metrics.message_refused(event.channel, event.code or "refused")
            return
        if event.kind == "command":
            outcome = "command"
        else:
            outcome = "answered" if event.answered else "failed"
        metrics.turn_finished(outcome, event.duration_s, attempts=event.attempts)
        if event.delivered:
            metrics.message_answered(SessionKey.parse(event.session_key).channel)

    return observe


# ------------------------------------------------------------------------------ CLI


def _setup_logging(args: Any, config: Config | None, *, default_level: str | None = None,
                   ) -> None:
    from bridge.logs import setup_logging

    _LOG_FLAGS["level"] = getattr(args, "log_level", None) or default_level
    _LOG_FLAGS["format"] = getattr(args, "log_format", None)
    level = _LOG_FLAGS["level"] or (config.logging.level if config else "info")
    fmt = _LOG_FLAGS["format"] or (config.logging.format if config else "text")
    setup_logging(level, fmt, stream=sys.stderr)


# --log-level / --log-format of this process (they outrank the config, also on reload).
_LOG_FLAGS: dict[str, str | None] = {}


def register_config_secrets(config: Config) -> None:
    """Redact every secret of ``config`` from the logs (at start and on each reload)."""
    from bridge.config.load import config_secrets
    from bridge.logs import register_secret

    for secret in config_secrets(config):
        register_secret(secret)


_register_secrets = register_config_secrets


# ------------------------------------------------------------------- one process per data


class DataDirBusy(Exception):
    """Another Palaver process holds the lock (message says which and what to do)."""


class ProcessLock:
    """An exclusive ``flock`` on a file in the data directory, held while running.

    ``palaver run`` takes ``<dataDir>/palaver.lock``: two bridges on one store would
    answer every message twice.  ``palaver chat --session S`` takes
    ``<dataDir>/console-<S>.lock``: it may run beside ``palaver run`` (it only touches
    its own console session) but not twice for one session.  The kernel drops the lock
    when the process dies, so a crash never leaves a stale lock.
    """

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`DataDirBusy` (never waits)."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no lock
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise DataDirBusy(
                f"{self.what} is already in use by process {holder} (lock {self.path}); "
                "stop that one first, or use another dataDir") from None
        except OSError:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode("ascii"))
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def run_lock(data_dir: Path) -> ProcessLock:
    return ProcessLock(Path(data_dir) / "palaver.lock",
                       f"the data directory {data_dir} (a `palaver run`)")


def console_lock(data_dir: Path, session: str) -> ProcessLock:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", session)[:40]
    digest = hashlib.sha256(session.encode("utf-8")).hexdigest()[:8]
    return ProcessLock(Path(data_dir) / f"console-{safe}-{digest}.lock",
                       f"console session {session!r} (a `palaver chat`)")


async def _prepare(config: Config, *, targets=None) -> tuple[Callable[[Config], Config] | None,
                                                             str | None]:
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


def cmd_run(args: Any) -> int:
    """``palaver run``: every enabled channel, hot reload, graceful stop on SIGINT/SIGTERM."""
    from bridge.config.load import ConfigError, load_for_cli
    from bridge.config.watch import LiveConfig

    try:
        config, path = load_for_cli(args)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    _setup_logging(args, config)
    _register_secrets(config)
    live = LiveConfig(config, path)
    return asyncio.run(_run(live, args))


async def _run(live: LiveConfig, args: Any, *, ready: Callable[[App], Any] | None = None) -> int:
    lock = run_lock(live.current.data_dir)
    try:
        lock.acquire()
    except DataDirBusy as exc:
        print(f"palaver: {exc}", file=sys.stderr)
        return 2
    try:
        return await _run_locked(live, args, ready)
    finally:
        lock.release()


async def _run_locked(live: LiveConfig, args: Any, ready: Callable[[App], Any] | None) -> int:
    adjust, error = await _prepare(live.current, targets=getattr(args, "probe_targets", None))
    if error:
        print(error, file=sys.stderr)
        return 2
    app = App(live, adjust=adjust, serve_health=True)
    await app.start()
    if not app.channels:
        print("palaver: no channel is enabled — set channels.telegram or channels.whatsapp "
              "in the config (or try `palaver chat`)", file=sys.stderr)
        await app.stop(0)
        return 2
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
    return 0


def cmd_chat(args: Any) -> int:
    """``palaver chat``: the console channel through the same pipeline.

    Not a terminal: one message per line, each final reply on stdout, diagnostics on
    stderr, exit at end of input (status 1 if a turn failed).
    """
    from bridge.config.load import ConfigError, load_for_cli

    try:
        config, _path = load_for_cli(args)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    _setup_logging(args, config, default_level="warning")
    _register_secrets(config)
    return asyncio.run(chat(config, session=getattr(args, "session", None) or "operator",
                            model=getattr(args, "model", None),
                            probe_targets=getattr(args, "probe_targets", None)))


async def chat(config: Config, *, session: str = "operator", model: str | None = None,
               stdin: Any = None, stdout: Any = None, interactive: bool | None = None,
               probe_targets=None) -> int:
    """Run a console chat over ``stdin``/``stdout``; returns the exit status.

    Ctrl-C (SIGINT) ends it at once, also while waiting for input: a running turn gets
    a second to finish, else it is answered the next time this session is opened.
    """
    lock = console_lock(config.data_dir, session)
    try:
        lock.acquire()
    except DataDirBusy as exc:
        print(f"palaver: {exc}; or pick another name with --session", file=sys.stderr)
        return 2
    try:
        return await _chat_locked(config, session=session, model=model, stdin=stdin,
                                  stdout=stdout, interactive=interactive,
                                  probe_targets=probe_targets)
    finally:
        lock.release()


async def _chat_locked(config: Config, *, session: str, model: str | None, stdin: Any,
                       stdout: Any, interactive: bool | None, probe_targets) -> int:
    from channels.console import ConsoleChannel

    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    if interactive is None:
        interactive = bool(getattr(stdin, "isatty", lambda: False)())
    adjust, error = await _prepare(config, targets=probe_targets)
    if error:
        print(error, file=sys.stderr)
        return 2
    effective = adjust(config) if adjust else config
    override = None
    if model:
        try:
            override = effective.resolve_ref(model)
        except KeyError as exc:
            print(f"palaver: --model: {exc}", file=sys.stderr)
            return 2
    console = ConsoleChannel(session=session, out=stdout)
    app = App(config, channels=[console], adjust=adjust)
    await app.start()
    key = str(console.make_inbound("").session_key)
    if override:
        app.core.set_model_override(key, override)
    failed: set[int] = set()

    def on_turn(event: AcceptEvent | TurnEvent) -> None:
        if isinstance(event, TurnEvent) and event.session_key == key and not event.answered:
            failed.update(event.message_ids)

    app.core.add_observer(on_turn)
    failures = 0
    interrupted = False
    lines = StdinLines(stdin)
    try:
        await app.core.wait_idle()  # anything recovered from an earlier run
        if interactive:
            print("Palaver chat — /help for commands, Ctrl-D to quit.", file=sys.stderr)
        while True:
            if interactive:
                print("you> ", end="", file=sys.stderr, flush=True)
            line = await lines.readline()
            if not line:
                break
            text = line.rstrip("\r\n")
            if not text.strip():
                continue
            _inbound, status = await console.submit(text)
            if status is not AcceptStatus.ACCEPTED:
                print(f"palaver: message not accepted ({status})", file=sys.stderr)
                failures += 1
                continue
            before = len(failed)
            await app.core.wait_idle()
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
    return 1 if failures else 0


class StdinLines:
    """Lines of a stream for the event loop, without a thread blocked in ``readline``.

    A terminal or pipe is watched with ``loop.add_reader``, so cancelling ``readline()``
    (Ctrl-C) returns at once and nothing keeps the process alive.  Streams the loop
    cannot watch (regular files, ``StringIO``) are read in a worker thread; they never
    block for long.  ``readline()`` returns ``""`` at end of input.
    """

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._loop = asyncio.get_running_loop()
        self._lines: deque[str] = deque()
        self._buffer = ""
        self._eof = False
        self._ready = asyncio.Event()
        encoding = getattr(stream, "encoding", None) or "utf-8"
        self._decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
        self._fd: int | None = None
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):
            return
        try:
            self._loop.add_reader(fd, self._on_readable)
        except (OSError, ValueError, NotImplementedError):
            return  # e.g. a regular file (epoll refuses it)
        self._fd = fd

    def _on_readable(self) -> None:
        assert self._fd is not None
        try:
            data = os.read(self._fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self._buffer += self._decoder.decode(data)
            while "\n" in self._buffer:
                line, self._buffer = self._buffer.split("\n", 1)
                self._lines.append(line + "\n")
        else:
            self._buffer += self._decoder.decode(b"", final=True)
            if self._buffer:
                self._lines.append(self._buffer)
                self._buffer = ""
            self._eof = True
            self.close()
        self._ready.set()

    async def readline(self) -> str:
        """The next line (with its newline), ``""`` at end of input."""
        if self._fd is None and not self._eof and not self._lines:
            return await asyncio.to_thread(self._stream.readline)
        while not self._lines:
            if self._eof:
                return ""
            self._ready.clear()
            await self._ready.wait()
        return self._lines.popleft()

    def close(self) -> None:
        """Stop watching the stream (idempotent)."""
        if self._fd is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._fd)
            self._fd = None
