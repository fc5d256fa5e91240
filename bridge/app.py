"""The composition root: config, store, media, router, core and channels, and their lifecycle.

This is the one place that knows which channels exist (imported lazily, so the core never
loads a platform SDK).  The processes around it — ``palaver run`` and ``palaver chat`` —
are in :mod:`bridge.run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO, runtime_checkable

from bridge.config.resolve import configured_model_refs
from bridge.config.schema import Config
from bridge.conversation import AcceptEvent, ConversationCore, TurnEvent
from bridge.envelope import AcceptStatus, SessionKey
from bridge.media import MediaStore
from bridge.metrics import Metrics, TurnOutcome
from bridge.store import Store
from bridge.usage.record import recorder_for
from bridge.voice.wiring import VoiceService

if TYPE_CHECKING:
    from bridge.config.watch import LiveConfig
    from bridge.console_web.server import ConsoleServer
    from bridge.health import HealthServer
    from bridge.models.base import Router
    from bridge.ports import Channel
    from bridge.store.coord import Coordinator
    from bridge.usage.budgets import BudgetGuard
    from channels.console import ConsoleChannel

log = logging.getLogger(__name__)


@runtime_checkable
class _Led(Protocol):
    """A channel part of whose work only the holder of a leadership may do: Telegram's
    polling (it sends on every process), WhatsApp's one connection per device (nothing
    at all without it)."""

    name: str
    account: str

    @property
    def leadership(self) -> str | None: ...

    @property
    def serves_only_while_leading(self) -> bool: ...

    def follow_leader(self, check: Callable[[], None],
                      leader: Callable[[], str | None] | None = None) -> None: ...

    async def start_leading(self) -> None: ...

    async def stop_leading(self) -> None: ...


def _gain_callback(channel: _Led) -> Callable[[int], Awaitable[None]]:
    async def gain(_epoch: int) -> None:
        await channel.start_leading()
    return gain


def _lose_callback(channel: _Led, coord: Coordinator) -> Callable[[], Awaitable[None]]:
    """Stop leading; a channel that serves nothing without the leadership then gives up
    its chats (session keys ``<channel>:<account>:``) so the new leader's process takes
    them at once instead of after this one's lease."""
    async def lose() -> None:
        await channel.stop_leading()
        if channel.serves_only_while_leading:
            prefix = f"{channel.name}:{channel.account}:"  # SessionKey's "channel:account:"
            try:
                given = await coord.disown(prefix)
            except Exception as exc:  # stopping, or the store is unwell: the reaper frees them
                log.warning("could not give up the %s chats: %s", prefix.rstrip(":"), exc)
            else:
                if given:
                    log.info("gave up %d %s chat(s) to the new leader", len(given),
                             prefix.rstrip(":"))
    return lose


def build_channels(config: Config, *, media: MediaStore, data_dir: Path,
                   store: Store | None = None) -> list[Channel]:
    """The enabled platform channels (a channel that cannot be built is logged, skipped).

    On a PostgreSQL store WhatsApp keeps its device keys in that database and what it
    learns in ``store``'s key-value table, so any process can take the connection over."""
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
            extra = _whatsapp_stores(config, store) if name == "whatsapp" else {}
            out.append(cls(chan_config, media=media, data_dir=data_dir, **extra))
        except Exception as exc:
            log.error("channel %s cannot start: %s", name, exc)
    console = config.channels.console
    if console is not None and console.enabled:
        log.info("channels.console is used by `palaver chat`; `palaver run` does not read "
                 "the terminal")
    return out


def _whatsapp_stores(config: Config, store: Store | None) -> dict[str, Any]:
    """WhatsApp's ``session`` (SQLite file or PostgreSQL) and, on PostgreSQL, ``shared``."""
    from channels.whatsapp.session import SessionStore

    session = SessionStore.for_config(config, db=store)
    return {"session": session, "shared": store if session.shared else None}


def console_app(config: Config, *, session: str, out: TextIO,
                adjust: Callable[[Config], Config] | None = None,
                ) -> tuple[App, ConsoleChannel]:
    """An App whose one channel is the terminal (``palaver chat``), and that channel."""
    from channels.console import ConsoleChannel

    console = ConsoleChannel(session=session, out=out)
    return App(config, channels=[console], adjust=adjust), console


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
        router: Router | None = None,
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
        self._coord: Coordinator | None = None  # which process answers which chat
        self._media: MediaStore | None = None
        self._core: ConversationCore | None = None
        self._voice: VoiceService | None = None
        self._health_server: HealthServer | None = None
        self._console_server: ConsoleServer | None = None
        self._budgets: BudgetGuard | None = None  # the router's provider budgets
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

    def cluster_status(self) -> dict[str, Any] | None:
        """The coordinator's status (as ``/healthz``'s ``cluster``): ``mode`` "cluster"
        with several processes on one PostgreSQL store; None before start or after stop."""
        if self._coord is None or self._stopped:
            return None
        return self._coord.status()

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
    def router(self) -> Router | None:
        """The model router (None before start() when none was given)."""
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
        from bridge import __version__
        from bridge.store import coord

        # PostgreSQL: a PgCoordinator (store.leaseSeconds), the pool named like the
        # process so a reaper can end its backends; SQLite: the single-process one.
        self._store, self._coord = await coord.connect(config, info={"version": __version__})
        await self._coord.start()  # registers: before the core claims anything
        # PostgreSQL: media shared with every process through media_blobs (a photo
        # received here is readable by the process that runs its turn); SQLite: local.
        self._media = MediaStore.for_store(data_dir / "media", self._store)
        if self._router is None:
            from bridge.models.router import ModelRouter
            from bridge.usage.budgets import BudgetGuard

            self._budgets = BudgetGuard(lambda: self.config, recorder_for(self._store))
            self._router = ModelRouter(lambda: self.config, budget=self._budgets)
        if self._metrics is None:
            self._metrics = Metrics()
            # Labels name configured models only (read per turn: hot reload included).
            self._metrics.set_model_source(lambda: configured_model_refs(self.config))
        if self._given_channels is not None:
            channels = self._given_channels
        else:
            channels = build_channels(config, media=self._media, data_dir=data_dir,
                                      store=self._store)
        # Voice notes: transcription and speech through the router's loop; ffmpeg found
        # on PATH (said at start when spoken replies are on and it is missing).
        self._voice, ffmpeg_notice = VoiceService.for_app(
            self._router, self._store, self._media, lambda: self.config)
        if ffmpeg_notice:
            log.info("%s", ffmpeg_notice)
        # Owner commands that write the config (/model NAME --channel|--default) edit the
        # file this Palaver reads, then apply it at once.
        self._core = ConversationCore(
            self._store, lambda: self.config, self._router, media=self._media,
            config_path=self._live.path if self._live is not None else None,
            reload_config=self._live.reload if self._live is not None else None,
            voice=self._voice, coordinator=self._coord)
        if self._metrics is not None:
            self._core.add_observer(_metrics_observer(self._metrics))
            self._metrics.set_pending_source(self._core.pending_count)
            recorder_for(self._store).listen(self._metrics.usage_recorded)
            self._core.limits.on_refused = self._metrics.limit_refused
        for channel in channels:
            self._core.attach(channel)
            # Telegram polling: one process at a time polls a bot (the leader of
            # telegram/<account>:poll); the others send only.  WhatsApp: one process at
            # a time connects the device (whatsapp/<account>); the others stand by.
            # Alone, it leads at once.
            led = channel if isinstance(channel, _Led) else None
            lead = led.leadership if led is not None else None
            if led is not None and lead is not None:
                led.follow_leader(functools.partial(self._coord.check_leader, lead),
                                  functools.partial(self._coord.leader_of, lead))
            try:
                await channel.start(self._core)
            except Exception as exc:
                label = _channel_label(channel)
                self._channel_errors[label] = f"failed to start: {exc}"
                log.error("channel %s failed to start: %s", label, exc)
            self._channels.append(channel)
            if led is not None and lead is not None:
                await self._coord.lead(lead, _gain_callback(led),
                                       _lose_callback(led, self._coord))
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
        if self._serve_health:  # `palaver run`: the web console (console.enabled)
            from bridge.console_web.wiring import start_console

            self._console_server = await start_console(self, self._live)
        log.info("palaver running: channels=%s data=%s",
                 ",".join(_channel_label(c) for c in self._channels) or "none", data_dir)

    async def stop(self, grace: float | None = None) -> None:
        """Stop taking new turns, let running ones finish within ``grace`` seconds
        (default agents.defaults.shutdownGraceSeconds), then close everything."""
        if not self._started or self._stopped:
            return
        self._stopped = True
        if self._console_server is not None:  # its live streams end before the core does
            with contextlib.suppress(Exception):
                await self._console_server.stop()
            self._console_server = None
        if self._core is not None:
            await self._core.stop(grace)
        if self._voice is not None:
            with contextlib.suppress(Exception):
                await self._voice.aclose()
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
        if self._coord is not None:
            # Gives up its chats and its processes row: peers take over at once.
            with contextlib.suppress(Exception):
                await self._coord.stop()
        if self._store is not None:
            await self._store.close()
        log.info("palaver stopped")

    async def health(self) -> dict[str, Any]:
        """``{"store": {"ok", "detail"}, "channels": {name: {"connected", "detail"}}}``,
        ``"cluster"`` (the coordinator's status: which process this is, what it owns), and ``"budgets": {provider: {dailyUsd, monthlyUsd, spentTodayUsd, spentMonthUsd,
        exhausted, detail}}`` for providers with a budget."""
        report: dict[str, Any] = {"store": {"ok": False, "detail": "not started"},
                                  "channels": {}}
        if self._store is not None and not self._stopped:
            problem = self._core.store_problem if self._core is not None else None
            # An outage seen by accept() keeps the app not ready until a message is
            # stored again (the channels hold their messages back meanwhile).
            ok = problem is None and await self._store.check_writable()
            detail = "" if ok else (problem or "cannot write the database")
            report["store"] = {"ok": ok, "detail": detail}
        for channel in self._channels:
            label = _channel_label(channel)
            try:
                h = channel.health()
                entry = {"connected": h.connected, "detail": h.detail}
            except Exception as exc:
                entry = {"connected": False, "detail": f"health check failed: {exc}"}
            if label in self._channel_errors and not entry["connected"]:
                entry["detail"] = entry["detail"] or self._channel_errors[label]
            if self._standing_by(channel):
                entry["standby"] = True  # another process leads: not this one's to connect
            report["channels"][label] = entry
        cluster = self.cluster_status()
        if cluster is not None:
            report["cluster"] = cluster
        if self._core is not None:
            report["pending"] = self._core.pending_count()
            report["busy_sessions"] = self._core.busy_sessions
        if self._budgets is not None and self._store is not None and not self._stopped:
            try:
                budgets = await self._budgets.status()
            except Exception as exc:  # the store is unwell: already reported above
                log.debug("budget status unavailable: %s", exc)
            else:
                if budgets:
                    report["budgets"] = budgets
        return report

    def _standing_by(self, channel: Channel) -> bool:
        """Whether ``channel`` serves nothing here because another process leads it."""
        if not isinstance(channel, _Led) or not channel.serves_only_while_leading:
            return False
        lead = channel.leadership
        if lead is None or self._coord is None or self._coord.holds(lead):
            return False
        leader = self._coord.leader_of(lead)
        return leader is not None and leader != self._coord.process_id

    def _on_reload(self, new: Config) -> None:
        old, self._applied = self._applied, new
        register_config_secrets(self.config)
        if old is None or old.logging != new.logging:
            try:
                from bridge.logs import setup_logging_with_flags

                # Flags given on the command line keep outranking the file.
                setup_logging_with_flags(new.logging.level, new.logging.format,
                                         stream=sys.stderr)
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
    if old.console != new.console:
        changed.append("console")
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
    account = channel.account
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
            outcome = TurnOutcome.COMMAND
        else:
            outcome = TurnOutcome.ANSWERED if event.answered else TurnOutcome.FAILED
        metrics.turn_finished(outcome, event.duration_s, attempts=event.attempts)
        if event.delivered:
            metrics.message_answered(SessionKey.parse(event.session_key).channel)

    return observe


def register_config_secrets(config: Config) -> None:
    """Redact every secret of ``config`` from the logs (at start and on each reload)."""
    from bridge.config.load import config_secrets
    from bridge.logs import register_secret

    for secret in config_secrets(config):
        register_secret(secret)
