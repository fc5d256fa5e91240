"""A fake of neonize's own ``NewAClient`` surface, behaving like neonize 0.5.2 + whatsmeow.

Palaver's real :class:`channels.whatsapp.client.NeonizeClient` runs against it: install
it with :func:`install` (it replaces ``neonize.aioze.client.NewAClient``, the Go library
``neonize.aioze.client.gocode`` and ``ClientFactory.get_all_devices_from_db``).
:class:`FakeGo` is the Go library's state (its ``clients`` map, the session database,
the account on WhatsApp's side); :class:`FakeGoLibrary` its exported functions.

What it reproduces (found in ``goneonize/main.go`` and whatsmeow, see WIRE.md):

- Every Go call goes the way neonize 0.5's sends it: the client's ``_NewAClient__client``
  (neonize's own ``async_gocode`` object, used as it is) runs the library function of
  that name with ``asyncio.to_thread``, i.e. on the event loop's default executor, and
  the function blocks the thread that calls it (:attr:`FakeGo.gates` holds a function
  until the test sets its event, like a stalled network call).  The library functions
  take ``(uuid, work)``, ``work`` standing in for the serialised arguments and Go's body.

- ``connect()`` returns a task whose ``Neonize()`` runs in a real worker thread and
  blocks until Stop.  Go opens (and migrates) the store before it registers the client
  (``clients[uuid]``): until then, and after Stop, every call is a nil dereference, which
  kills the process; the fake records it in :attr:`FakeGo.crashes` (tests assert it
  stays empty) and raises.  ``Stop`` before registration also crashes.
- Its first callback (code 0, the device record from ``FetchMe``) sets ``client.me``;
  ``FetchMe`` spins while the device has no id and ignores Stop: a login nobody
  finishes never returns from ``Neonize()`` (:meth:`FakeGo.release` ends the thread at
  test teardown, as the process exit does for real).
- A QR login emits QR codes, then ``PairStatus`` SUCCESS and ``Connected`` on a scan;
  a pairing-error event is never delivered (real neonize does not).
- ``ConnectFailure`` is emitted with whatsmeow's auto-reconnect already off: nothing
  else happens and ``Neonize()`` keeps blocking.
- A first connect after login has no push name: ``send_presence`` fails with
  whatsmeow's ``ErrNoPushName`` until :meth:`FakeGo.sync_push_name`.
- ``upload(binary, media_type=None)`` runs Go's ``Upload`` (the type from libmagic
  when not given, as neonize does) and answers neonize's ``UploadResponse`` (``url``,
  ``DirectPath``, ``MediaKey``, ``FileEncSHA256``, ``FileSHA256``, ``FileLength``);
  :attr:`FakeGo.upload_errors` fail it with ``UploadError``; :attr:`FakeGo.uploads`.
- ``download_any`` knows image, video, audio, document and sticker only (a
  ``ptvMessage`` gets whatsmeow's "didn't find any attachments in message").
- The device record of ``get_all_devices_from_db`` is Go's ``"%s,%s,%s,%t"`` split on
  commas by neonize: a name with a comma raises ``ValueError`` there.
- The session database is whatsmeow's ``whatsmeow_device`` table (the columns that
  matter), where Go's ``getDB(name)`` puts it: a SQLite file ``name``, or, when
  ``name`` starts with ``postgres``, that PostgreSQL database (``sqlstore.New("postgres",
  name)`` over lib/pq 1.12).  lib/pq's quirks: ``sslmode`` defaults to ``require``, so
  against a server without SSL (ask it: ``SHOW ssl``) every store call fails with
  ``pq: SSL is not enabled on the server`` unless the URL says ``disable``, ``allow``
  or ``prefer``; an unknown ``sslmode`` is refused; every other query parameter that is
  not one of lib/pq's own settings is sent as a run-time parameter (``search_path``),
  and a ``search_path`` naming a schema that does not exist fails the upgrade with
  ``no schema has been selected to create in`` (3F000).  ``GetAllDevices`` answers
  such an error as the string ``"error: failed to upgrade database: ..."``, which
  neonize's ``get_all_devices_from_db`` then splits on commas (``ValueError``);
  ``Neonize()`` returns it (``NeonizeError`` from the connect task).
- WhatsApp lets one connection per device: when a client connects with a device whose
  keys another client of this process has connected (the same session database), the
  FIRST gets ``StreamReplacedEv`` (whatsmeow's ``handleStreamError`` on
  ``<conflict type="replaced">``: ``expectDisconnect`` and the event, no reconnect; its
  ``Neonize()`` keeps blocking until Stop) and is no longer connected
  (:attr:`FakeGo.replaced` lists the clients that got it).
- ``build_reaction(chat, sender, message_id, reaction)`` runs Go's ``BuildReaction``
  (whatsmeow's ``BuildReaction``/``BuildMessageKey``): a ``reactionMessage`` with
  ``key{remoteJID: chat, fromMe, ID, participant}``, ``text`` (``""`` removes) and
  ``senderTimestampMS``; ``fromMe`` is false for another user's message, and
  ``participant`` (the sender without its device) is set only outside direct chats
  (``s.whatsapp.net``, ``lid``).  It is sent with ``send_message`` like any message
  (:meth:`FakeGo.reactions_to`).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neonize.aioze import events as neonize_events
from neonize.aioze.events import ConnectedEv, ConnectFailureEv, PairStatusEv, StreamReplacedEv
from neonize.exc import (
    DownloadError,
    NeonizeError,
    SendMessageError,
    SendPresenceError,
    UploadError,
)
from neonize.proto import Neonize_pb2 as N
from neonize.proto.waCommon import WACommon_pb2
from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as waE2E
from neonize.utils.jid import Jid2String, build_jid

NO_PUSH_NAME = "can't send presence without PushName set"  # whatsmeow ErrNoPushName
NOTHING_DOWNLOADABLE = "didn't find any attachments in message"
_DOWNLOADABLE = ("imageMessage", "videoMessage", "audioMessage", "documentMessage",
                 "stickerMessage")

# The columns of whatsmeow's whatsmeow_device that matter here (sqlstore upgrades).
_SCHEMA = """
CREATE TABLE IF NOT EXISTS whatsmeow_version (version INTEGER, compat INTEGER);
CREATE TABLE IF NOT EXISTS whatsmeow_device (
    jid TEXT PRIMARY KEY, lid TEXT, facebook_uuid uuid,
    registration_id BIGINT NOT NULL DEFAULT 0,
    platform TEXT NOT NULL DEFAULT '', business_name TEXT NOT NULL DEFAULT '',
    push_name TEXT NOT NULL DEFAULT '', lid_migration_ts BIGINT NOT NULL DEFAULT 0,
    companion_meta_nonce TEXT NOT NULL DEFAULT ''
);
"""


class GoCrash(RuntimeError):
    """What would have been a nil dereference in a cgo call (the process dies)."""


def _jid(user: str, server: str, device: int = 0) -> N.JID:
    return N.JID(User=user, Server=server, RawAgent=0, Device=device, Integrator=0,
                 IsEmpty=False)


@dataclass
class Account:
    """The WhatsApp account on the phone, as WhatsApp's servers know it."""

    phone: str = "15550001111"
    lid: str = "99000111"
    push_name: str = "Palaver Bot"
    business_name: str = ""
    device: int = 7


@dataclass
class FakeGo:
    """The Go library's process-wide state and WhatsApp's side of the account."""

    account: Account = field(default_factory=Account)
    clients: dict[str, FakeNewAClient] = field(default_factory=dict)
    crashes: list[str] = field(default_factory=list)
    calls: list[tuple[str, Any]] = field(default_factory=list)
    sent: list[tuple[str, N.Message | Any]] = field(default_factory=list)
    presences: list[bytes] = field(default_factory=list)
    reads: list[tuple[tuple[str, ...], str, str]] = field(default_factory=list)
    stops: list[str] = field(default_factory=list)
    pair_requests: list[Any] = field(default_factory=list)
    # how the next connect goes
    # ConnectFailure reason names (e.g. "GENERIC"), one per coming connect
    connect_failures: list[str] = field(default_factory=list)
    # set: Go opens its store only once the test sets it (the start-up window)
    store_gate: threading.Event | None = None
    # set: DownloadAny blocks until the test sets it (a stalled transfer)
    download_gate: threading.Event | None = None
    # Go function name -> event: that function blocks its thread until the event is set
    gates: dict[str, threading.Event] = field(default_factory=dict)
    in_flight: int = 0  # library calls running now (not Neonize/Stop)
    peak_in_flight: int = 0
    threads: list[tuple[str, str]] = field(default_factory=list)  # (function, thread name)
    returned: list[str] = field(default_factory=list)  # functions, in the order they returned
    downloads_in_flight: int = 0
    max_downloads_in_flight: int = 0
    neonize_calls: int = 0
    made: int = 0  # NewAClient objects made (each a Go client whose finaliser calls Stop)
    push_name_synced: bool = True  # False: the first connect after login
    download_data: bytes = b"media-bytes"
    send_errors: list[str] = field(default_factory=list)  # each raises once, in order
    # Upload: (bytes, MediaType) per call; each error raises UploadError once, in order
    uploads: list[tuple[bytes, Any]] = field(default_factory=list)
    upload_errors: list[str] = field(default_factory=list)
    auto_connect: bool = True  # a linked device gets Connected at once
    qr_codes: int = 1  # QR codes emitted per login attempt
    connects: list[str] = field(default_factory=list)  # clients WhatsApp accepted, in order
    replaced: list[str] = field(default_factory=list)  # clients that got StreamReplaced
    _released: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def library(self) -> FakeGoLibrary:
        """The exported functions (what ``neonize._binder.gocode`` is for real)."""
        return FakeGoLibrary(self)

    def _export(self, name: str, uuid: bytes, work: Callable[[], Any]) -> Any:
        """One exported Go function running in the calling thread (blocking it)."""
        counted = name not in ("Neonize", "Stop")
        with self._lock:
            self.threads.append((name, threading.current_thread().name))
            if counted:
                self.in_flight += 1
                self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            return work()
        finally:
            with self._lock:
                self.returned.append(name)
                if counted:
                    self.in_flight -= 1

    def _block(self, name: str) -> None:
        """A stalled call: wait (blocking this thread) while ``gates[name]`` is unset."""
        gate = self.gates.get(name)
        if gate is not None:
            while not gate.wait(0.01):
                if self._released.is_set():
                    return

    # -- test controls -----------------------------------------------------------

    def link(self, db_path: Path | str, *, push_name: str | None = None) -> None:
        """Store a linked device in ``db_path`` (as after a finished login): a SQLite
        file, or the lib/pq URL Palaver hands neonize for a PostgreSQL store (its
        ``search_path`` schema is created first, as Palaver's login does)."""
        if push_name is not None:
            self.account.push_name = push_name
        store = session_store(db_path)
        store.create_schema()
        store.write(self.account)

    def deliver(self, event: Any, client: FakeNewAClient | None = None) -> None:
        """Go hands an event (e.g. a ``MessageEv``) to Python."""
        client = client or next(iter(self.clients.values()))
        client._dispatch(type(event), event)

    def die(self, error: str = "proto: cannot parse invalid wire-format data") -> None:
        """neonize's event loop dies (an unmapped proto2 field): Neonize() returns an
        error, but Go's client stays registered and connected until Stop."""
        for client in list(self.clients.values()):
            client._death = error
            client._cancel.set()

    def reactions_to(self, message_id: str) -> list[tuple[str, Any]]:
        """``(chat, ReactionMessage)`` of every reaction sent to ``message_id``, in order."""
        return [(chat, m.reactionMessage) for chat, m in self.sent
                if isinstance(m, waE2E.Message) and m.HasField("reactionMessage")
                and m.reactionMessage.key.ID == message_id]

    @property
    def presence_calls(self) -> list[str]:
        """The presence calls that reached Go (``SendPresence``, ``SendChatPresence``)."""
        return [name for name, _ in self.calls
                if name in ("SendPresence", "SendChatPresence")]

    def sync_push_name(self) -> None:
        self.push_name_synced = True

    def scan(self, client: FakeNewAClient | None = None) -> None:
        """The phone scanned the QR (or the code was typed): pair, store, connect."""
        client = client or next(iter(self.clients.values()))
        client._paired()

    def release(self) -> None:
        """End every spinning or blocked Neonize() thread (what process exit does)."""
        self._released.set()
        for client in list(self.clients.values()):
            client._cancel.set()

    def new_client(self, name: str, jid: N.JID | None = None, props: Any = None,
                   uuid: str | None = None, new_device: bool = False) -> FakeNewAClient:
        self.made += 1
        return FakeNewAClient(name, jid, props, uuid, new_device, go=self)

    # -- what ClientFactory.get_all_devices_from_db does with Go's record ---------

    def get_all_devices_from_db(self, db: str) -> list[N.Device]:
        """neonize's parsing of Go's ``GetAllDevices`` string (commas split)."""
        try:
            record = "|\u0001|".join(
                f"{jid},{push},{business},true" for jid, push, business in _read_devices(db)
            )
        except StoreError as exc:  # Go's GetAllDevices answers the error as the record
            record = f"error: {exc}"
        if not record:
            return []
        devices = []
        for device_str in record.split("|\u0001|"):
            id_, push_name, business_name, initialized = device_str.split(",")
            user, server = id_.split("@")
            devices.append(N.Device(JID=build_jid(user, server), PushName=push_name,
                                    BussinessName=business_name,
                                    Initialized=initialized == "true"))
        return devices


class StoreError(RuntimeError):
    """Go's ``getDB``/``sqlstore`` failed (the text is Go's ``err.Error()``)."""


# lib/pq's own connection settings (conn.go ``isDriverSetting``): never sent to the
# server; every other parameter is a run-time parameter of the startup message.
_PQ_DRIVER_SETTINGS = frozenset({
    "host", "port", "password", "sslmode", "sslcert", "sslkey", "sslrootcert",
    "sslinline", "sslsni", "sslpassword", "sslnegotiation", "connect_timeout",
    "disable_prepared_binary_result", "binary_parameters", "krbsrvname", "krbspn",
    "load_balance_hosts", "target_session_attrs", "min_protocol_version",
    "max_protocol_version", "passfile", "service",
})
_PQ_SSLMODES = ("disable", "allow", "prefer", "require", "verify-full", "verify-ca")
_PQ_PLAIN = ("disable", "allow", "prefer")  # connect without SSL when the server has none


class _SqliteSession:
    """whatsmeow's store in the SQLite file ``name``."""

    def __init__(self, name: str | Path) -> None:
        self.path = Path(name)

    @property
    def identity(self) -> str:
        return str(self.path.resolve())

    def open(self) -> None:
        conn = sqlite3.connect(self.path)
        try:
            conn.executescript(_SCHEMA)
        finally:
            conn.close()

    def read(self) -> list[tuple[str, str, str]]:
        if not self.path.exists():
            return []
        conn = sqlite3.connect(self.path)
        try:
            try:
                return list(conn.execute(
                    "SELECT jid, push_name, business_name FROM whatsmeow_device"))
            except sqlite3.OperationalError:
                return []
        finally:
            conn.close()

    def write(self, account: Account) -> None:
        conn = sqlite3.connect(self.path)
        try:
            conn.executescript(_SCHEMA)
            conn.execute("DELETE FROM whatsmeow_device")
            conn.execute(
                "INSERT INTO whatsmeow_device (jid, lid, platform, business_name, push_name) "
                "VALUES (?, ?, ?, ?, ?)", _device_row(account))
            conn.commit()
        finally:
            conn.close()

    def delete(self) -> None:
        self.path.unlink(missing_ok=True)

    def create_schema(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)


class _PgSession:
    """whatsmeow's store in the PostgreSQL database of the lib/pq URL ``name``."""

    def __init__(self, name: str) -> None:
        parts = urllib.parse.urlsplit(name)
        query = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
        self.sslmode = query.get("sslmode") or "require"  # lib/pq's default
        self.settings = {k: v for k, v in query.items() if k not in _PQ_DRIVER_SETTINGS}
        self.schema = self.settings.get("search_path")
        self.url = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        self.identity = f"{parts.hostname}:{parts.port}{parts.path}?{self.schema or 'public'}"

    def _run(self, work: Callable[[Any], Any], *, check_ssl: bool = True) -> Any:
        """``work(conn)`` on a connection as lib/pq would open it (a thread of its own:
        Go's calls never touch the caller's event loop); errors as Go's text."""
        if self.sslmode not in _PQ_SSLMODES:
            raise StoreError(f'pq: wrong value for "sslmode": "{self.sslmode}" is not '
                             "supported; supported values are disable, allow, prefer, "
                             "require, verify-full, or verify-ca")
        result: list[Any] = []
        errors: list[BaseException] = []

        async def go() -> None:
            import asyncpg

            conn = await asyncpg.connect(self.url, ssl=False, timeout=10,
                                         server_settings=self.settings)
            try:
                if check_ssl and self.sslmode not in _PQ_PLAIN and (
                        await conn.fetchval("SHOW ssl")) != "on":
                    raise StoreError("pq: SSL is not enabled on the server")
                result.append(await work(conn))
            finally:
                await conn.close()

        def main() -> None:
            import asyncpg

            try:
                asyncio.run(go())
            except asyncpg.PostgresError as exc:
                errors.append(StoreError(f"pq: {exc} ({exc.sqlstate})"))
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                errors.append(exc)

        thread = threading.Thread(target=main, name="fake-lib-pq")
        thread.start()
        thread.join()
        if errors:
            raise errors[0]
        return result[0]

    def open(self) -> None:
        async def migrate(conn: Any) -> None:
            await conn.execute(_SCHEMA)

        try:
            self._run(migrate)
        except StoreError as exc:
            raise StoreError(f"failed to upgrade database: {exc}") from None

    def read(self) -> list[tuple[str, str, str]]:
        async def read(conn: Any) -> list[tuple[str, str, str]]:
            await conn.execute(_SCHEMA)  # GetAllDevices' getDB upgrades first
            return [tuple(r) for r in await conn.fetch(
                "SELECT jid, push_name, business_name FROM whatsmeow_device")]

        try:
            return self._run(read)
        except StoreError as exc:
            raise StoreError(f"failed to upgrade database: {exc}") from None

    def write(self, account: Account) -> None:
        async def write(conn: Any) -> None:
            await conn.execute(_SCHEMA)
            await conn.execute("DELETE FROM whatsmeow_device")
            await conn.execute(
                "INSERT INTO whatsmeow_device (jid, lid, platform, business_name, push_name)"
                " VALUES ($1, $2, $3, $4, $5)", *_device_row(account))

        self._run(write)

    def delete(self) -> None:
        async def delete(conn: Any) -> None:
            if await conn.fetchval("SELECT to_regclass('whatsmeow_device')") is not None:
                await conn.execute("DELETE FROM whatsmeow_device")

        self._run(delete)

    def create_schema(self) -> None:
        """What Palaver does before Go opens the store (CREATE SCHEMA), not Go."""
        if not self.schema:
            return
        schema = self.schema

        async def create(conn: Any) -> None:
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')

        self._run(create, check_ssl=False)


def session_store(name: str | Path) -> _SqliteSession | _PgSession:
    """Where Go's ``getDB(name)`` keeps whatsmeow's store."""
    if isinstance(name, str) and name.startswith("postgres"):
        return _PgSession(name)
    return _SqliteSession(name)


def _device_row(account: Account) -> tuple[str, str, str, str, str]:
    return (f"{account.phone}:{account.device}@s.whatsapp.net",
            f"{account.lid}:{account.device}@lid", "android", account.business_name,
            account.push_name)


def _write_device(name: str | Path, account: Account) -> None:
    session_store(name).write(account)


def _read_devices(name: str | Path) -> list[tuple[str, str, str]]:
    return session_store(name).read()


def _open_store(name: str | Path) -> None:
    """Go's getDB: open and migrate (creates the tables, no device)."""
    session_store(name).open()


class FakeGoLibrary:
    """``neonize._binder.gocode`` (the ctypes library): ``library.SendMessage(uuid, work)``
    runs ``work`` in the calling thread as Go's exported ``SendMessage`` would."""

    def __init__(self, go: FakeGo) -> None:
        self._go = go

    def __getattr__(self, name: str) -> Callable[[bytes, Callable[[], Any]], Any]:
        if name.startswith("_"):
            raise AttributeError(name)
        go = self._go

        def export(uuid: bytes, work: Callable[[], Any]) -> Any:
            return go._export(name, uuid, work)

        return export


class _Result:
    def __init__(self, message_id: str) -> None:
        self.ID = message_id


class FakeNewAClient:
    """``neonize.aioze.client.NewAClient`` as far as Palaver uses it."""

    def __init__(self, name: str, jid: N.JID | None = None, props: Any = None,
                 uuid: str | None = None, new_device: bool = False, *,
                 go: FakeGo) -> None:
        self.name = name
        self.device_props = props
        self.uuid = (uuid or name).encode()
        self.me: N.Device | None = None
        self.connected = False
        self._go = go
        self._handlers: dict[type, Callable[..., Any]] = {}
        self._qr: Callable[..., Any] | None = None
        self._cancel = threading.Event()
        self._linked = threading.Event()
        self._registered = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._death: str | None = None
        self.connect_task: asyncio.Task | None = None
        self.sent_count = 0
        # neonize's dispatcher: every method below reaches Go only through it.
        from neonize.aioze import client as neonize_client

        self._NewAClient__client = neonize_client.async_gocode

    # -- registration (as neonize's Event) -----------------------------------------

    def event(self, event_type: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def register(handler: Callable[..., Any]) -> Callable[..., Any]:
            self._handlers[event_type] = handler
            return handler

        return register

    def qr(self, handler: Callable[..., Any]) -> None:
        self._qr = handler

    # -- the Go side (runs in the Neonize() worker thread) -------------------------

    @property
    def _key(self) -> str:
        return self.uuid.decode()

    def _dispatch(self, event_type: type, message: Any) -> None:
        handler = self._handlers.get(event_type)
        loop = neonize_events.event_global_loop
        if handler is not None and loop is not None and not loop.is_closed():
            asyncio.run_coroutine_threadsafe(handler(self, message), loop)

    def _dispatch_qr(self, code: bytes) -> None:
        loop = neonize_events.event_global_loop
        if self._qr is not None and loop is not None and not loop.is_closed():
            asyncio.run_coroutine_threadsafe(self._qr(self, code), loop)

    def _neonize(self) -> str:
        """Go's ``Neonize()``: blocks until Stop (and FetchMe has returned)."""
        go = self._go
        go.neonize_calls += 1
        db = self.name
        if go.store_gate is not None:
            while not go.store_gate.wait(0.01):
                if go._released.is_set():
                    return ""
        try:
            _open_store(db)
        except StoreError as exc:  # getDB failed: Neonize() returns err.Error()
            return str(exc)
        go.clients[self._key] = self  # registered only after the store is open
        self._registered.set()
        linked = bool(_read_devices(db))
        if not linked:
            for n in range(go.qr_codes):
                self._dispatch_qr(f"2@fake-qr-{n},key,adv".encode())
        # FetchMe: spin while the device has no id; Stop does not end this.
        while not (linked or self._linked.is_set()):
            if go._released.wait(0.01):
                return ""
            linked = bool(_read_devices(db))
        acc = go.account
        self.me = N.Device(JID=_jid(acc.phone, "s.whatsapp.net", acc.device),
                           LID=_jid(acc.lid, "lid", acc.device), Platform="android",
                           BussinessName=acc.business_name,
                           PushName=acc.push_name if go.push_name_synced else "",
                           Initialized=True)
        if go.connect_failures:
            # whatsmeow's handleConnectFailure: auto-reconnect already off.
            self._dispatch(ConnectFailureEv, ConnectFailureEv(
                Reason=N.ConnectFailureReason.Value(go.connect_failures.pop(0)),
                Message="", Raw=N.Node(Tag="failure")))
        elif go.auto_connect and not self._linked.is_set():
            self._come_online()
        self._cancel.wait()
        self.connected = False
        return self._death or ""

    def _come_online(self) -> None:
        """WhatsApp accepts this connection; one connection per device, so another
        client of the same device that is connected gets ``<conflict type="replaced">``
        (whatsmeow: ``StreamReplaced``, no reconnect)."""
        go = self._go
        identity = session_store(self.name).identity
        with go._lock:
            others = [c for c in go.clients.values() if c is not self and c.connected
                      and session_store(c.name).identity == identity]
            for other in others:
                other.connected = False
                go.replaced.append(other._key)
            self.connected = True
            go.connects.append(self._key)
        for other in others:
            other._dispatch(StreamReplacedEv, StreamReplacedEv())
        self._dispatch(ConnectedEv, ConnectedEv(status=True))

    def _paired(self) -> None:
        acc = self._go.account
        _write_device(self.name, acc)
        self._dispatch(PairStatusEv, PairStatusEv(
            ID=_jid(acc.phone, "s.whatsapp.net"), BusinessName=acc.business_name,
            Platform="android", Status=N.PairStatus.SUCCESS))
        self._linked.set()
        self._come_online()

    def _client_or_crash(self, call: str) -> None:
        if self._key not in self._go.clients:
            self._go.crashes.append(f"{call}: nil client for {self._key}")
            raise GoCrash(f"{call} reached Go without a registered client (process abort)")
        self._go.calls.append((call, None))

    async def _go_call(self, call: str, fn: Callable[[], Any]) -> Any:
        def run() -> Any:
            self._client_or_crash(call)  # Go reads clients[uuid] first, then works
            self._go._block(call)
            return fn()

        return await getattr(self._NewAClient__client, call)(self.uuid, run)

    # -- the Python surface ----------------------------------------------------------

    async def connect(self) -> asyncio.Task:
        self._loop = asyncio.get_running_loop()
        neonize_events.set_event_loop(self._loop)
        self._cancel = threading.Event()

        async def run() -> None:
            err = await self._NewAClient__client.Neonize(self.uuid, self._neonize)
            if err:
                raise NeonizeError(err)

        self.connect_task = self._loop.create_task(run())
        return self.connect_task

    async def stop(self) -> None:
        def stop() -> None:
            key = self._key
            self._go.stops.append(key)
            if not self._registered.is_set():
                self._go.crashes.append(f"Stop before {key} was registered")
                raise GoCrash("Stop before the client was registered")
            self._go.clients.pop(key, None)
            self.connected = False
            self._cancel.set()

        await self._NewAClient__client.Stop(self.uuid, stop)

    async def send_message(self, to: N.JID, message: Any) -> Any:
        def send() -> Any:
            if self._go.send_errors:
                raise SendMessageError(self._go.send_errors.pop(0))
            self._go.sent.append((Jid2String(to), message))
            self.sent_count += 1
            return _Result(f"3EB0FAKE{len(self._go.sent)}")

        return await self._go_call("SendMessage", send)

    async def build_reaction(self, chat: N.JID, sender: N.JID, message_id: str,
                             reaction: str) -> waE2E.Message:
        """neonize's ``build_reaction``: Go's ``BuildReaction`` (whatsmeow's
        ``BuildReaction`` over ``BuildMessageKey``) answers the message to send."""
        def build() -> waE2E.Message:
            acc = self._go.account
            key = WACommon_pb2.MessageKey(remoteJID=Jid2String(chat), fromMe=True,
                                          ID=message_id)
            if sender.User and sender.User not in (acc.phone, acc.lid):
                key.fromMe = False
                if chat.Server not in ("s.whatsapp.net", "lid", "msgr"):
                    key.participant = f"{sender.User}@{sender.Server}"  # ToNonAD
            return waE2E.Message(reactionMessage=waE2E.ReactionMessage(
                key=key, text=reaction, senderTimestampMS=int(time.time() * 1000)))

        return await self._go_call("BuildReaction", build)

    async def upload(self, binary: bytes, media_type: Any = None) -> N.UploadResponse:
        """neonize 0.5's ``upload``: the media type from libmagic unless given, Go's
        ``Upload`` encrypts and posts to WhatsApp's media servers and answers an
        ``UploadReturnFunction`` whose ``Error`` becomes :class:`UploadError`."""
        import hashlib
        import os

        from neonize.utils.enum import MediaType

        mime = media_type or MediaType.from_magic(binary)

        def upload() -> N.UploadResponse:
            if self._go.upload_errors:
                raise UploadError(self._go.upload_errors.pop(0))
            self._go.uploads.append((bytes(binary), mime))
            key = os.urandom(32)
            # whatsmeow encrypts with keys derived from mediaKey; FileEncSHA256 is the
            # hash of what it posted, FileSHA256 and FileLength the plaintext's.
            enc_sha = hashlib.sha256(key + binary).digest()
            token = enc_sha[:8].hex()
            path = f"/v/t62.7117-24/{token}.enc?ccb=11-4&oh=01_{token}&oe=6800FFFF"
            return N.UploadResponse(url=f"https://mmg.whatsapp.net{path}&mms3=true",
                                    DirectPath=path, Handle="", MediaKey=key,
                                    FileEncSHA256=enc_sha,
                                    FileSHA256=hashlib.sha256(binary).digest(),
                                    FileLength=len(binary))

        return await self._go_call("Upload", upload)

    async def send_presence(self, presence: Any) -> None:
        def send() -> None:
            if not self._go.push_name_synced:
                raise SendPresenceError(NO_PUSH_NAME)
            self._go.presences.append(presence.value)

        await self._go_call("SendPresence", send)

    async def set_force_activate_delivery_receipts(self, active: bool) -> None:
        await self._go_call("SetForceActiveDeliveryReceipts", lambda: None)

    async def send_chat_presence(self, jid: N.JID, state: Any, media: Any) -> None:
        await self._go_call("SendChatPresence", lambda: None)

    async def mark_read(self, *message_ids: str, chat: N.JID, sender: N.JID,
                        receipt: Any, timestamp: int | None = None) -> None:
        def mark() -> None:
            self._go.reads.append((message_ids, Jid2String(chat), Jid2String(sender)))

        await self._go_call("MarkRead", mark)

    async def download_any(self, message: Any, path: str | None = None) -> bytes:
        def download() -> bytes:
            if not any(message.HasField(name) for name in _DOWNLOADABLE):
                raise DownloadError(NOTHING_DOWNLOADABLE)
            go = self._go
            go.downloads_in_flight += 1
            go.max_downloads_in_flight = max(go.max_downloads_in_flight,
                                             go.downloads_in_flight)
            try:
                if go.download_gate is not None:
                    while not go.download_gate.wait(0.01):
                        if go._released.is_set():
                            break
                return go.download_data
            finally:
                go.downloads_in_flight -= 1

        return await self._go_call("DownloadAny", download)

    async def get_me(self) -> N.Device:
        return await self._go_call("GetMe", lambda: self.me)

    async def get_pn_from_lid(self, jid: N.JID) -> N.JID:
        return await self._go_call("GetPNFromLID", lambda: N.JID(
            User="", Server="", RawAgent=0, Device=0, Integrator=0, IsEmpty=True))

    async def PairPhone(self, phone: str, show_push_notification: bool,  # noqa: N802
                        client_name: Any = None, client_type: Any = None) -> str:
        from neonize.utils.enum import ClientName, ClientType

        # neonize's own default: the client type from DeviceProps.platformType by value.
        if client_type is None:
            client_type = ClientType(self.device_props.platformType)
        client_name = client_name or ClientName.LINUX
        display = f"{client_type.name} ({client_name.name})"

        def pair() -> str:
            self._go.pair_requests.append((phone, display))
            return "ABCD-EFGH"

        return await self._go_call("PairPhone", pair)

    async def logout(self) -> None:
        def logout() -> None:
            session_store(self.name).delete()

        await self._go_call("Logout", logout)


def install(monkeypatch: Any, go: FakeGo | None = None) -> FakeGo:
    """Make ``neonize.aioze.client`` hand out fakes (and parse devices as neonize does)."""
    from neonize.aioze import client as neonize_client

    go = go or FakeGo()
    monkeypatch.setattr(neonize_client, "NewAClient", go.new_client)
    monkeypatch.setattr(neonize_client, "gocode", go.library)
    monkeypatch.setattr(neonize_client.ClientFactory, "get_all_devices_from_db",
                        staticmethod(go.get_all_devices_from_db))
    return go


def install_bounded(monkeypatch: Any, go: FakeGo | None = None) -> FakeGo:
    """:func:`install`, with the client's waits at test scale (the production values are
    seconds): what the in-process WhatsApp tests use."""
    from channels.whatsapp.client import NeonizeClient

    go = install(monkeypatch, go)
    monkeypatch.setattr(NeonizeClient, "ready_wait_s", 0.3)
    monkeypatch.setattr(NeonizeClient, "stop_timeout_s", 0.3)
    monkeypatch.setattr(NeonizeClient, "ready_poll_s", 0.01)
    return go
