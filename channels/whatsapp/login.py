"""``palaver whatsapp login`` / ``logout``: link or unlink this bridge as a WhatsApp device.

Login shows the QR codes WhatsApp rotates (about every 20 s) in the terminal, or with
``--phone +E164`` asks for a pairing code to type on the phone.  The session database
lives under ``<dataDir>/whatsapp/``, or, when the config's store is PostgreSQL, in that
database (schema ``whatsmeow``, see :mod:`channels.whatsapp.session`) so every Palaver
of a cluster can connect with it; ``palaver run`` then connects with it.

When linking does not succeed, neonize's Go thread cannot be stopped (``FetchMe`` spins
while the device has no id, and ignores Stop), so the command ends the process itself
once its message is printed (``exit_fn``, ``os._exit``) instead of hanging at exit.
A pairing-error event is never delivered by neonize: a code typed wrong ends in the
link timeout, not in a "pairing failed" message.

``status`` reads the session database (read-only, no connection) and, when a Palaver
is running with its health server on, the channel's state from ``/healthz``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Any, TextIO

from neonize.aioze.events import (
    ConnectedEv,
    ConnectFailureEv,
    LoggedOutEv,
    PairStatusEv,
    TemporaryBanEv,
)

from channels.whatsapp.client import (
    ExitFunction,
    NeonizeClient,
    WhatsAppClient,
    exit_if_stuck,
    read_linked_devices,
)
from channels.whatsapp.content import enum_name
from channels.whatsapp.session import SessionStore

# WhatsApp offers about six QR codes, ~160 s, then whatsmeow's QR loop stops without
# ever closing: give up before that, with a message.
LOGIN_TIMEOUT_S = 150.0
FINISH_TIMEOUT_S = 30.0  # after pairing, wait this long for the first real connection
LOGOUT_CONNECT_TIMEOUT_S = 30.0

# Given the SQLite file (a Path) or, on PostgreSQL, the SessionStore.
ClientFactory = Callable[[Any], WhatsAppClient]


class _Reached(StrEnum):
    """How far a logout's connection got before it could unlink."""

    CONNECTED = "connected"
    LOGGED_OUT = "logged out"  # the phone had already removed this device


def render_qr(code: str) -> str:
    """The QR code for ``code`` as terminal text (light modules drawn, for dark terminals)."""
    import qrcode

    qr = qrcode.QRCode(border=2, error_correction=qrcode.constants.ERROR_CORRECT_L)
    qr.add_data(code)
    qr.make(fit=True)
    buffer = io.StringIO()
    qr.print_ascii(out=buffer, invert=True)
    return buffer.getvalue()


def normalise_phone(text: str) -> str | None:
    """``+49 151 2345-678`` -> ``491512345678``; None when it is not an E.164 number."""
    digits = re.sub(r"[\s\-().]", "", text or "")
    if digits.startswith("+"):
        digits = digits[1:]
    return digits if re.fullmatch(r"[1-9]\d{6,14}", digits) else None


async def run_login(
    *,
    data_dir: Path,
    phone: str | None = None,
    client_factory: ClientFactory | None = None,
    out: TextIO | None = None,
    link_timeout: float = LOGIN_TIMEOUT_S,
    finish_timeout: float = FINISH_TIMEOUT_S,
    exit_fn: ExitFunction = os._exit,
    session_store: SessionStore | None = None,
) -> int:
    """Link a device; 0 when linked, 1 on failure (with a clear message on ``out``).

    ``session_store`` is where the keys go (default: the SQLite file under ``data_dir``).
    When neonize's thread outlives the stop (linking did not finish), the process is
    ended with that status by ``exit_fn`` after the message is flushed.
    """
    def say(text: str = "") -> None:
        print(text, file=out or sys.stdout, flush=True)

    digits = None
    if phone is not None:
        digits = normalise_phone(phone)
        if digits is None:
            say(f"error: --phone needs an international number like +4915123456789, "
                f"got {phone!r}")
            return 1
    store = session_store or SessionStore.sqlite(data_dir)
    try:
        await store.prepare()
        client = (client_factory or NeonizeClient)(_client_target(store))
        if await client.has_session():
            say(f"This bridge is already linked (session in {store.location}).")
            say("Run `palaver whatsapp logout` first to link another account.")
            return 0
    except Exception as exc:
        say(f"error: cannot read the WhatsApp session database {store.label}: {exc}")
        return 1

    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[tuple[bool, str]] = loop.create_future()
    paired = asyncio.Event()
    state = {"qr": 0, "pairing_requested": False}

    def finish(ok: bool, message: str) -> None:
        if not outcome.done():
            outcome.set_result((ok, message))

    async def on_qr(code: str) -> None:
        if digits is not None:
            if state["pairing_requested"]:
                return
            state["pairing_requested"] = True
            try:
                pairing_code = await client.pair_phone(digits)
            except Exception as exc:
                finish(False, f"could not get a pairing code for +{digits}: {exc}")
                return
            say(f"Pairing code for +{digits}:  {pairing_code}")
            say("On the phone: WhatsApp > Settings > Linked devices > Link a device > "
                "Link with phone number instead, then type the code.")
            return
        state["qr"] += 1
        if state["qr"] > 1:
            say("\n(WhatsApp rotated the code; scan this one)")
        say(render_qr(code))
        say("Scan with the phone: WhatsApp > Settings > Linked devices > Link a device.")

    async def on_pair(event: Any) -> None:
        if enum_name(event, "Status") == "SUCCESS":
            who = event.ID.User if event.HasField("ID") else ""
            say(f"Linked{' to +' + who if who else ''}; finishing set-up…")
            paired.set()
        else:
            finish(False, f"pairing failed: {event.Error or 'unknown error'}")

    async def on_connected(_event: Any) -> None:
        finish(True, "WhatsApp is linked. Start the bridge with `palaver run`.")

    async def on_logged_out(event: Any) -> None:
        finish(False, f"WhatsApp refused the login ({enum_name(event, 'Reason')})")

    async def on_failure(event: Any) -> None:
        reason = enum_name(event, "Reason")
        if reason in ("LOGGED_OUT", "MAIN_DEVICE_GONE", "UNKNOWN_LOGOUT", "CLIENT_OUTDATED",
                      "TEMP_BANNED", "BAD_USER_AGENT"):
            finish(False, f"WhatsApp refused the connection ({reason})")

    async def on_ban(event: Any) -> None:
        finish(False, f"this account is temporarily banned ({enum_name(event, 'Code')})")

    client.on(PairStatusEv, on_pair)
    client.on(ConnectedEv, on_connected)
    client.on(LoggedOutEv, on_logged_out)
    client.on(ConnectFailureEv, on_failure)
    client.on(TemporaryBanEv, on_ban)
    client.on_qr(on_qr)

    try:
        try:
            session = asyncio.ensure_future(await client.connect())
        except Exception as exc:
            say(f"error: could not connect to WhatsApp: {exc}")
            return 1
        ok, message = await _wait_login(outcome, paired, session, link_timeout, finish_timeout)
    except BaseException:  # Ctrl-C: stop, and do not hang on neonize's thread either
        with contextlib.suppress(Exception):
            await client.close()
        exit_if_stuck(client, 130, exit_fn=exit_fn)
        raise
    with contextlib.suppress(Exception):
        await client.close()
    say(message if ok else f"error: {message}")
    exit_if_stuck(client, 0 if ok else 1, exit_fn=exit_fn)
    return 0 if ok else 1


async def _wait_login(
    outcome: asyncio.Future[tuple[bool, str]],
    paired: asyncio.Event,
    session: asyncio.Future[Any],
    link_timeout: float,
    finish_timeout: float,
) -> tuple[bool, str]:
    paired_wait = asyncio.ensure_future(paired.wait())
    try:
        done, _ = await asyncio.wait({outcome, session, paired_wait}, timeout=link_timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        if outcome in done:
            return outcome.result()
        if paired_wait in done and not session.done():
            # Paired: the keys are stored; whatsmeow reconnects once to finish.
            done, _ = await asyncio.wait({outcome, session}, timeout=finish_timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
            if outcome in done:
                return outcome.result()
            if not done:
                return True, ("WhatsApp is linked (the first connection is still settling). "
                              "Start the bridge with `palaver run`.")
        if session.done():
            if outcome.done():
                return outcome.result()
            error = None if session.cancelled() else session.exception()
            if error is not None:
                return False, f"could not connect to WhatsApp: {error}"
            if paired.is_set():
                return True, "WhatsApp is linked. Start the bridge with `palaver run`."
            return False, "the WhatsApp connection ended before the device was linked"
        if paired.is_set():
            return True, "WhatsApp is linked. Start the bridge with `palaver run`."
        return False, (f"no device was linked within {link_timeout:.0f} s; run "
                       "`palaver whatsapp login` again")
    finally:
        paired_wait.cancel()


def _client_target(store: SessionStore) -> Path | SessionStore:
    """What the client factory gets: the SQLite file, or the PostgreSQL store."""
    return store if store.shared or store.path is None else store.path


async def run_logout(
    *,
    data_dir: Path,
    client_factory: ClientFactory | None = None,
    out: TextIO | None = None,
    connect_timeout: float = LOGOUT_CONNECT_TIMEOUT_S,
    exit_fn: ExitFunction = os._exit,
    session_store: SessionStore | None = None,
) -> int:
    """Unlink the device (when WhatsApp is reachable) and delete the stored session
    (the SQLite files, or the device in PostgreSQL: every Palaver of the cluster loses
    it)."""
    def say(text: str) -> None:
        print(text, file=out or sys.stdout, flush=True)

    store = session_store or SessionStore.sqlite(data_dir)
    if store.path is not None and not store.path.exists():
        say(f"No WhatsApp session under {store.location}; nothing to unlink.")
        return 0
    unlinked = False
    problem = None
    client = (client_factory or NeonizeClient)(_client_target(store))
    try:
        linked = await client.has_session()
    except Exception as exc:
        linked, problem = False, f"cannot read the session database: {exc}"
    if not linked and problem is None and store.shared:
        say(f"No WhatsApp session in {store.location}; nothing to unlink.")
        return 0
    if linked:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[_Reached] = loop.create_future()

        async def on_connected(_event: Any) -> None:
            if not ready.done():
                ready.set_result(_Reached.CONNECTED)

        async def on_logged_out(_event: Any) -> None:
            if not ready.done():
                ready.set_result(_Reached.LOGGED_OUT)

        client.on(ConnectedEv, on_connected)
        client.on(LoggedOutEv, on_logged_out)
        try:
            session = asyncio.ensure_future(await client.connect())
            waiting: set[asyncio.Future[Any]] = {ready, session}
            done, _ = await asyncio.wait(waiting, timeout=connect_timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
            if ready in done and ready.result() is _Reached.LOGGED_OUT:
                unlinked = True
            elif ready in done:
                await client.logout()
                unlinked = True
            elif session in done and not session.cancelled() and session.exception():
                problem = f"could not connect: {session.exception()}"
            else:
                problem = f"could not connect within {connect_timeout:.0f} s"
        except Exception as exc:
            problem = f"{type(exc).__name__}: {exc}"
        finally:
            with contextlib.suppress(Exception):
                await client.close()
    try:
        removed = await store.forget()
    except Exception as exc:
        say(f"error: could not delete the stored session in {store.label}: {exc}")
        exit_if_stuck(client, 1, exit_fn=exit_fn)
        return 1
    if problem:
        say(f"error: could not unlink from WhatsApp ({problem}).")
        if removed:
            say("The local session was deleted anyway; also remove this device on the phone: "
                "WhatsApp > Settings > Linked devices.")
        exit_if_stuck(client, 1, exit_fn=exit_fn)
        return 1
    say("Unlinked from WhatsApp and deleted the local session." if unlinked
        else "Deleted the local WhatsApp session.")
    exit_if_stuck(client, 0, exit_fn=exit_fn)
    return 0


def _session(args: Any) -> tuple[Path, SessionStore] | None:
    """``dataDir`` of the config the command should use and where its WhatsApp session
    is (PostgreSQL when the store is), Palaver's logging set up; None (after a message)
    on error."""
    from bridge.config.load import ConfigError, load_for_cli

    try:
        loaded = load_for_cli(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    config = loaded[0] if isinstance(loaded, tuple) else loaded
    _setup_command_logging(args, config)
    try:
        return config.data_dir, SessionStore.for_config(config)
    except Exception as exc:  # StoreError, SessionStoreError: never the URL itself
        print(f"error: {exc}", file=sys.stderr)
        return None


def _data_dir(args: Any) -> Path | None:
    """``dataDir`` of the config the command should use (see :func:`_session`)."""
    found = _session(args)
    return found[0] if found is not None else None


def _read_devices(where: Path | SessionStore) -> list[Any]:
    """The linked devices of a SQLite file or a PostgreSQL store (from any thread)."""
    if not isinstance(where, SessionStore):
        return read_linked_devices(where)
    if where.path is not None:
        return read_linked_devices(where.path)
    return asyncio.run(where.linked_devices())


def whatsapp_status(db_path: Path | SessionStore, health_url: str | None, *,
                    timeout: float = 2.0) -> tuple[int, list[str]]:
    """``palaver whatsapp status``: (exit status, lines); never connects to WhatsApp.

    The session comes from the database (read-only: a running Palaver keeps its own
    connection, a second one would replace it).  The channel's state comes from a
    running Palaver's ``/healthz`` when ``health_url`` is given and answers.  Exit 0
    when a device is linked, 1 when not (or the database cannot be read).
    """
    lines = []
    if isinstance(db_path, SessionStore):
        label, location = db_path.label, db_path.location
    else:
        label, location = str(db_path), str(db_path.parent)
    try:
        devices = _read_devices(db_path)
    except Exception as exc:  # sqlite3.Error, OSError, SessionStoreError
        return 1, [f"session:  cannot read {label}: {exc}"]
    if not devices:
        lines.append(f"session:  none (not linked) in {location}; "
                     "run `palaver whatsapp login`")
    for device in devices:
        lines.append(f"session:  linked ({label})")
        lines.append(f"number:   +{device.phone}")
        lines.append(f"name:     {device.name or '(not synced yet)'}")
    lines.append(f"channel:  {_channel_state(health_url, timeout)}")
    return (0 if devices else 1), lines


def _channel_state(health_url: str | None, timeout: float) -> str:
    if health_url is None:
        return "unknown (the health server is disabled in the config)"
    try:
        with urllib.request.urlopen(health_url, timeout=timeout) as response:  # noqa: S310
            body = json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:  # 503: unhealthy, still a report
        try:
            body = json.loads(exc.read() or b"{}")
        except ValueError:
            return f"unknown ({health_url} answered {exc.code})"
    except (OSError, ValueError):
        return f"Palaver is not running (nothing answers {health_url})"
    channels = body.get("channels") if isinstance(body, dict) else None
    status = channels.get("whatsapp") if isinstance(channels, dict) else None
    if not isinstance(status, dict):
        return "not running in this Palaver (channels.whatsapp not enabled?)"
    state = "connected" if status.get("connected") else "not connected"
    detail = status.get("detail")
    return f"{state} ({detail})" if detail else state


def cmd_status(args: Any) -> int:
    """``palaver whatsapp status``."""
    from bridge.config.load import ConfigError, load_for_cli

    try:
        loaded = load_for_cli(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    config = loaded[0] if isinstance(loaded, tuple) else loaded
    health = config.health
    url = None
    if health.enabled:
        host = "127.0.0.1" if health.host in ("0.0.0.0", "::", "") else health.host
        url = f"http://{host}:{health.port}/healthz"
    try:
        store = SessionStore.for_config(config)
    except Exception as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    code, lines = whatsapp_status(store, url)
    for line in lines:
        print(line)
    return code


def cmd_login(args: Any) -> int:
    """``palaver whatsapp login [--phone +E164]``."""
    found = _session(args)
    if found is None:
        return 1
    data_dir, store = found
    return asyncio.run(run_login(data_dir=data_dir, phone=getattr(args, "phone", None),
                                 session_store=store))


def cmd_logout(args: Any) -> int:
    """``palaver whatsapp logout``."""
    found = _session(args)
    if found is None:
        return 1
    data_dir, store = found
    return asyncio.run(run_logout(data_dir=data_dir, session_store=store))


def _setup_command_logging(args: Any, config: Any) -> None:
    """Palaver's log handler (redacting, stderr) for login/logout, warnings by default.

    neonize calls ``logging.basicConfig`` when it is imported: without this, whatsmeow's
    log lines (and Palaver's) would be printed by that plain handler, unredacted.
    """
    from bridge.logs import setup_logging

    setup_logging(getattr(args, "log_level", None) or "warning",
                  getattr(args, "log_format", None) or config.logging.format,
                  stream=sys.stderr)
