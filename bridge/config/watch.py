"""Hot reload: the running config, swapped atomically when the file changes or on SIGHUP."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import logging
import signal
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Literal

from bridge.config.load import ConfigError, load_config
from bridge.config.schema import Config

log = logging.getLogger(__name__)

Subscriber = Callable[[Config], None | Awaitable[None]]
Fingerprint = tuple[int, int, str] | None  # (mtime_ns, size, sha256) or None: no file


def _fingerprint(path: Path, previous: Fingerprint) -> Fingerprint:
    """The file's identity; the hash is only recomputed when mtime or size moved."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    if previous is not None and previous[:2] == (st.st_mtime_ns, st.st_size):
        return previous
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size, digest)


class LiveConfig:
    """Holds the running :class:`Config`; reloads it when the file changes or on SIGHUP.

    Readers take ``live.current`` each time they need it (never cache it across turns);
    the attribute is replaced in one assignment, so a reader sees the old or the new
    config, never a mix.  An invalid edit is logged and the running config stays.
    """

    def __init__(self, config: Config, path: Path | None, *, interval: float = 1.0,
                 env: Mapping[str, str] | None = None,
                 fingerprint: Fingerprint | Literal["now"] = "now") -> None:
        """Wrap ``config``, loaded from ``path``.

        ``fingerprint`` identifies the file content ``config`` came from: by default it
        is taken now, so an edit made after this point (while the rest of the bridge
        starts) is loaded by :meth:`start`.  Call this off the event loop, or use
        :meth:`load`, which takes it just before reading the file.
        """
        self._current = config
        self.path = Path(path) if path is not None else None
        self.interval = interval
        self._env = env
        self._subscribers: list[Subscriber] = []
        self._lock = asyncio.Lock()
        self._poller: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[object]] = set()
        self._fingerprint: Fingerprint = None
        if fingerprint == "now":
            fingerprint = _fingerprint(self.path, None) if self.path is not None else None
        self._fingerprint = fingerprint
        self._sighup_loop: asyncio.AbstractEventLoop | None = None
        self._missing_logged = False

    @classmethod
    def load(cls, path: Path | None, *, interval: float = 1.0,
             env: Mapping[str, str] | None = None) -> LiveConfig:
        """Load ``path`` now (raising :class:`ConfigError`) and wrap it.

        The file's fingerprint is taken before it is read, so any later edit differs
        from it and is picked up by :meth:`start` or the poller.
        """
        seen = _fingerprint(Path(path), None) if path is not None else None
        return cls(load_config(path, env=env), path, interval=interval, env=env,
                   fingerprint=seen)

    @property
    def current(self) -> Config:
        """The config in force right now."""
        return self._current

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback(new_config)`` after each successful reload; returns an unsubscribe."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(callback)

        return unsubscribe

    async def start(self) -> None:
        """Start polling the file and listen for SIGHUP (when the platform allows it).

        If the file changed since the running config was loaded (an edit made while the
        bridge was starting), it is reloaded first.
        """
        if self._poller is not None:
            return
        if self.path is not None:
            seen = await asyncio.to_thread(_fingerprint, self.path, None)
            if seen is not None and (self._fingerprint is None
                                     or seen[2] != self._fingerprint[2]):
                log.info("config %s changed while starting; reloading it", self.path)
                await self.reload()
            elif seen is not None:
                self._fingerprint = seen
        self._poller = asyncio.create_task(self._poll(), name="config-watch")
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        except (NotImplementedError, RuntimeError, ValueError, AttributeError):
            log.debug("SIGHUP reload not available here (not the main thread or no signals)")
        else:
            self._sighup_loop = loop

    async def stop(self) -> None:
        """Stop watching; cancels and awaits every task this object started."""
        if self._sighup_loop is not None:
            with contextlib.suppress(Exception):
                self._sighup_loop.remove_signal_handler(signal.SIGHUP)
            self._sighup_loop = None
        tasks = [t for t in (self._poller, *self._tasks) if t is not None]
        self._poller = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()

    async def reload(self) -> bool:
        """Load the file again: swap it in and notify on success; on a ConfigError log it
        at ERROR and keep the running config.  Returns whether a new config is in force."""
        async with self._lock:
            if self.path is not None:
                self._fingerprint = await asyncio.to_thread(
                    _fingerprint, self.path, self._fingerprint)
            try:
                new = await asyncio.to_thread(load_config, self.path, env=self._env)
            except ConfigError as exc:
                log.error("config reload failed, keeping the running config:\n%s", exc)
                return False
            except Exception:
                log.exception("config reload crashed, keeping the running config")
                return False
            self._current = new
            log.info("config reloaded from %s", self.path or "built-in defaults")
            for callback in list(self._subscribers):
                try:
                    result = callback(new)
                    if inspect.isawaitable(result):
                        await result
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("config subscriber %r failed", callback)
            return True

    # -- internals -------------------------------------------------------------------

    def _on_sighup(self) -> None:
        log.info("SIGHUP: reloading the config")
        task = asyncio.get_running_loop().create_task(self.reload(), name="config-sighup")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _poll(self) -> None:
        if self.path is None:
            return
        while True:
            await asyncio.sleep(self.interval)
            try:
                seen = await asyncio.to_thread(_fingerprint, self.path, self._fingerprint)
            except OSError as exc:
                log.warning("cannot read config %s: %s", self.path, exc.strerror or exc)
                continue
            if seen is None:
                if not self._missing_logged:
                    log.warning("config %s disappeared; keeping the running config", self.path)
                    self._missing_logged = True
                continue
            self._missing_logged = False
            if self._fingerprint is None or seen[2] != self._fingerprint[2]:
                await self.reload()
            else:
                self._fingerprint = seen
