"""``palaver chats``: every chat Palaver has seen, the model answering each, and pins.

A chat is named as ``palaver chats`` prints it (:class:`ChatRef`):

* ``telegram:-1001234567890`` a group, ``telegram:-1001234567890:topic:7`` a forum topic
  (the form OpenClaw's ``modelByChannel`` uses for topic keys);
* ``telegram:123456789``, ``whatsapp:+15551234567`` a direct chat (the peer's id);
* ``<channel>:group:<id>`` / ``<channel>:direct:<id>`` force the kind of a chat the
  store has not seen (without it: a Telegram id starting with ``-`` and a WhatsApp id
  ending ``@g.us`` are groups, anything else direct).

Pinning (:func:`pin_model`) writes through the edit engine: into the chat's own
``groups``/``direct``/``topics`` entry when it has one, else into
``channels.modelByChannel.<channel>.<id>`` (the same precedence): creating a ``groups``
entry would change who may talk there (an allowlisted group, and a group entry replaces
the ``"*"`` entry's rules for that group), so a pin never creates one.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from bridge.config.resolve import (
    SelectionSource,
    UnknownModelError,
    model_by_channel_key,
    selection_source,
)
from bridge.durations import compact

if TYPE_CHECKING:
    from bridge.config.edit import Change, EditResult
    from bridge.config.schema import Config
    from bridge.store import Store
    from bridge.store.chats import ChatActivity

MODEL_SETTING = "model"  # the chat_settings name of the /model choice (bridge.commands)
Scope = Literal["chat", "channel", "default"]


class ChatError(Exception):
    """A chat that cannot be named or pinned as asked (one line for the user)."""


# --------------------------------------------------------------------------- naming


@dataclass(frozen=True, slots=True)
class ChatRef:
    """One chat: channel, kind, id (a direct chat: the peer), topic thread."""

    channel: str
    chat_id: str
    kind: Literal["direct", "group"]
    thread_id: str | None = None
    account: str = "default"

    def __str__(self) -> str:
        text = f"{self.channel}:{self.chat_id}"
        return f"{text}:topic:{self.thread_id}" if self.thread_id else text

    @property
    def kind_label(self) -> str:
        """``direct``, ``group`` or ``topic``."""
        return "topic" if self.thread_id else self.kind

    @property
    def session_key(self) -> str:
        """The store's session key of this chat (``telegram:default:group:-100``)."""
        if self.kind == "direct":
            scope = f"direct:{self.chat_id}"
        elif self.thread_id:
            scope = f"group:{self.chat_id}:topic:{self.thread_id}"
        else:
            scope = f"group:{self.chat_id}"
        return f"{self.channel}:{self.account}:{scope}"

    @classmethod
    def parse(cls, text: str) -> ChatRef:
        """``telegram:-100123``, ``telegram:-100123:topic:7``, ``whatsapp:+1555...``,
        ``telegram:group:-100123``; :class:`ChatError` if malformed."""
        channel, sep, rest = text.strip().partition(":")
        if not sep or not channel or not rest:
            raise ChatError(f"{text!r} is not a chat (expected CHANNEL:ID as `palaver chats` "
                            "prints it, e.g. telegram:-1001234567890)")
        kind: str | None = None
        head, sep, tail = rest.partition(":")
        if head in ("group", "direct") and sep:
            kind, rest = head, tail
        thread = None
        if ":topic:" in rest:
            rest, _, thread = rest.rpartition(":topic:")
            if not thread or not rest:
                raise ChatError(f"{text!r}: expected CHANNEL:ID:topic:THREAD")
            kind = "group"
        if kind is None:
            kind = "group" if _looks_like_group(channel, rest) else "direct"
        return cls(channel, rest, "group" if kind == "group" else "direct", thread)

    @classmethod
    def from_session_key(cls, session_key: str) -> ChatRef:
        """The chat of a store session key."""
        channel, account, scope = session_key.split(":", 2)
        kind, _, rest = scope.partition(":")
        thread = None
        if kind == "group" and ":topic:" in rest:
            rest, _, thread = rest.rpartition(":topic:")
        return cls(channel, rest, "group" if kind == "group" else "direct", thread, account)


def _looks_like_group(channel: str, chat_id: str) -> bool:
    if channel == "telegram":
        return chat_id.startswith("-")
    if channel == "whatsapp":
        return chat_id.endswith("@g.us")
    return False


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True, slots=True)
class NextModel:
    """The model that will answer a chat's next message and where that choice comes from."""

    ref: str | None  # canonical ref; None: none configured (Palaver discovers a local one)
    fallbacks: tuple[str, ...]
    source: str  # "this chat's /model choice", "its group entry (channels...)", ...
    level: str  # "chat choice", "topic", "group", "direct", "group *", ..., "default"
    path: str  # the config path that holds it ("" for the chat's /model or an implicit one)


def next_model(config: Config, chat: ChatRef, *, sender_id: str | None = None,
               stored_choice: str | None = None) -> NextModel:
    """What answers ``chat`` next: its stored ``/model`` choice when that still resolves,
    else the configured selection (topic, group/direct, modelByChannel, ``"*"``, channel,
    default) — the precedence of :func:`bridge.commands.choose_models`."""
    selection, source = selection_source(
        config, chat.channel, chat_kind=chat.kind, chat_id=chat.chat_id,
        sender_id=sender_id or (chat.chat_id if chat.kind == "direct" else None),
        thread_id=chat.thread_id)
    try:
        configured = config.candidates(selection)
    except UnknownModelError:
        configured = []
    if stored_choice:
        try:
            ref = config.resolve_ref(stored_choice)
        except UnknownModelError:
            pass
        else:
            rest = tuple(r for r in configured if r != ref)
            return NextModel(ref, rest, "this chat's /model choice", "chat choice", "")
    if not configured:
        return NextModel(None, (), _source_text(source) + " (none configured)",
                         source.level, source.path)
    return NextModel(configured[0], tuple(configured[1:]), _source_text(source),
                     source.level, source.path)


def _source_text(source: SelectionSource) -> str:
    if "modelByChannel" in source.path:
        return f"modelByChannel ({source.path})"
    return str(source)


# --------------------------------------------------------------------------- listing


@dataclass(frozen=True, slots=True)
class ChatInfo:
    """One line of ``palaver chats``."""

    chat: str  # as printed, e.g. telegram:-1001234567890
    channel: str
    chat_id: str
    kind: str  # direct, group, topic
    name: str  # a direct chat's sender name, a group's title ("" when unknown)
    last_activity: float  # unix seconds
    messages: int
    pending: int  # inbound not answered + replies not delivered
    model: str | None
    model_source: str
    model_choice: str | None  # the stored /model choice, if any
    session_key: str


def chat_info(config: Config, row: ChatActivity) -> ChatInfo:
    ref = ChatRef.from_session_key(row.session_key)
    if ref.kind == "group":
        ref = ChatRef(ref.channel, row.chat_id, "group", row.thread_id, row.account)
    nxt = next_model(config, ref, sender_id=row.sender_id if ref.kind == "direct" else None,
                     stored_choice=row.model_choice)
    return ChatInfo(
        chat=str(ref), channel=ref.channel, chat_id=ref.chat_id, kind=ref.kind_label,
        name=(row.sender_name or "") if ref.kind == "direct" else (row.title or ""),
        last_activity=row.last_at, messages=row.messages,
        pending=row.pending_in + row.pending_out, model=nxt.ref, model_source=nxt.source,
        model_choice=row.model_choice, session_key=row.session_key)


async def list_chats(config: Config, store: Store, *, channel: str | None = None,
                     kind: str | None = None) -> list[ChatInfo]:
    """Every chat the store has seen, most recent first, filtered by channel and kind
    (``direct``, ``group``, ``topic``).  Read-only."""
    from bridge.store.chats import chat_activity

    out = []
    for row in await chat_activity(store):
        info = chat_info(config, row)
        if channel and info.channel != channel:
            continue
        if kind and info.kind != kind:
            continue
        out.append(info)
    return out


def _ago(ts: float, now: float) -> str:
    return f"{compact(now - ts)} ago"


def format_chats(rows: Sequence[ChatInfo], *, now: float | None = None,
                 short: bool = False) -> str:
    """The table ``palaver chats`` prints (``short``: one compact line per chat, for a
    chat reply)."""
    now = time.time() if now is None else now
    if not rows:
        return "No chats yet."
    if short:
        return "\n".join(
            f"{r.chat} ({r.kind}{', ' + r.name if r.name else ''}): "
            f"{r.model or 'none'} — {r.model_source}; {r.messages} msgs, "
            f"{_ago(r.last_activity, now)}" + (f", {r.pending} pending" if r.pending else "")
            for r in rows)
    headers = ("CHAT", "KIND", "NAME", "LAST", "MSGS", "PENDING", "MODEL", "FROM")
    table = [headers] + [
        (r.chat, r.kind, r.name or "-", _ago(r.last_activity, now), str(r.messages),
         str(r.pending), r.model or "none", r.model_source) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)
                               ).rstrip() for row in table)


# --------------------------------------------------------------------------- pinning


@dataclass(frozen=True)
class PinResult:
    """What :func:`pin_model` wrote and what now answers the chat."""

    edit: EditResult
    paths: tuple[str, ...]  # the config paths set or removed
    next: NextModel  # the chat's next model under the new config (its /model choice aside)
    message: str  # one line for the user (no secrets)


def _canonical(config: Config, ref: str) -> str:
    """``ref`` as a canonical ``provider/model`` (as written when it does not resolve)."""
    try:
        return config.resolve_ref(ref)
    except KeyError:
        return ref


def pin_changes(config: Config, chat: ChatRef, ref: Any, scope: Scope = "chat",
                *, clear: bool = False) -> list[Change]:
    """The config changes that pin (``clear``: unpin) ``chat``'s model at ``scope``.

    ``ref``: a ref or alias (or a ``{primary, fallbacks}`` dict).  :class:`ChatError`
    when the scope cannot be written (e.g. the channel has no block in the config:
    adding one would turn the channel on).
    """
    from bridge.config.edit import Change

    if scope == "default":
        current = config.agents.defaults.model
        if clear:
            return [Change.unset(("agents", "defaults", "model"))]
        if isinstance(ref, str) and current is not None and current.fallbacks:
            # Keep the configured fallbacks: only the primary changes (and a fallback that
            # becomes the primary is no longer also a fallback).
            primary = _canonical(config, ref)
            fallbacks = [f for f in current.fallbacks if _canonical(config, f) != primary]
            value: Any = {"primary": ref, "fallbacks": fallbacks} if fallbacks else ref
            return [Change.set(("agents", "defaults", "model"), value)]
        return [Change.set(("agents", "defaults", "model"), ref)]
    chan = config.channel(chat.channel)
    if scope == "channel":
        if chan is None:
            raise ChatError(f"channels.{chat.channel} is not in the config; adding it would "
                            "turn the channel on (add the block first)")
        path = ("channels", chat.channel, "model")
        return [Change.unset(path)] if clear else [Change.set(path, ref)]
    if chat.channel not in ("telegram", "whatsapp", "console"):
        raise ChatError(f"unknown channel {chat.channel!r} (expected telegram, whatsapp "
                        "or console)")
    if chan is None and not clear:
        raise ChatError(f"channels.{chat.channel} is not in the config, so no chat there "
                        "is answered (add the channel's block first)")
    key = model_by_channel_key(chat.chat_id, chat.thread_id)
    mbc = ("channels", "modelByChannel", chat.channel, key)
    own: tuple[str, ...] | None = None
    groups = getattr(chan, "groups", {}) or {}
    direct = getattr(chan, "direct", {}) or {}
    if chat.kind == "group" and chat.chat_id in groups:
        own = ("channels", chat.channel, "groups", chat.chat_id)
        if chat.thread_id:
            own = (*own, "topics", chat.thread_id)
    elif chat.kind == "direct" and chat.chat_id in direct:
        own = ("channels", chat.channel, "direct", chat.chat_id)
    by_channel = config.channels.modelByChannel.get(chat.channel, {})
    if clear:
        changes = []
        if own is not None:
            changes.append(Change.unset((*own, "model")))
        if key in by_channel:
            changes.append(Change.unset(mbc))
        return changes
    if own is not None:
        changes = [Change.set((*own, "model"), ref)]
        if key in by_channel:  # the entry's model wins anyway; one place says it
            changes.append(Change.unset(mbc))
        return changes
    return [Change.set(mbc, ref)]


def pin_model(config_path: str | Path, chat: ChatRef, ref: Any, scope: Scope = "chat", *,
              clear: bool = False, dry_run: bool = False, env: Any = None) -> PinResult:
    """Pin (or with ``clear`` unpin) the model of ``chat`` at ``scope`` — the chat
    itself, its whole channel, or the default — in the config file, through the edit
    engine (validated, atomic, guarded).  Blocking: from async code run it in a thread.

    Raises :class:`ChatError`, or the engine's ``EditError`` family
    (``InvalidEditError`` for an unknown model: ``.error.render()`` says why).
    """
    from bridge.config.edit import apply_edit
    from bridge.config.load import load_config

    config_path = Path(config_path)
    try:
        current = load_config(config_path, env=env)
    except Exception:
        # The file may be invalid right now (the edit may be what fixes it): decide the
        # paths from the file's own text without validation.
        current = _lenient(config_path)
    changes = pin_changes(current, chat, ref, scope, clear=clear)
    result = apply_edit(config_path, changes, env=env, dry_run=dry_run)
    nxt = next_model(result.config, chat)
    paths = tuple(c.describe() for c in changes)
    where = {"chat": str(chat), "channel": f"every {chat.channel} chat without a pin",
             "default": "the default"}[scope]
    if not result.changed:
        message = f"no change: {where} already says that"
    elif clear:
        message = (f"{'would remove' if dry_run else 'removed'} the pin of {where} "
                   f"({'; '.join(paths)}); {chat} now: {nxt.ref or 'none'} — {nxt.source}")
    else:
        message = (f"{where} {'would be' if dry_run else 'is'} pinned "
                   f"({'; '.join(paths)}); {chat} now: {nxt.ref or 'none'} — {nxt.source}")
    return PinResult(result, paths, nxt, message)


def _lenient(path: Path) -> Config:
    """The file's tree validated by the schema alone (no ${VAR}, no ref checks)."""
    import json5

    from bridge.config.schema import Config

    try:
        data = json5.loads(path.read_text("utf-8"))
        return Config.model_validate(data)
    except Exception:
        return Config()


async def reset_choice(store: Store, chat: ChatRef) -> bool:
    """Clear ``chat``'s stored ``/model`` choice; True when it had one."""
    had = await store.chat_setting(chat.session_key, MODEL_SETTING)
    await store.set_chat_setting(chat.session_key, MODEL_SETTING, None)
    return had is not None


async def resolve_chat(store: Store, text: str) -> ChatRef:
    """``text`` as a :class:`ChatRef`, its kind and account taken from the store when it
    has seen the chat."""
    from bridge.store.chats import chat_activity

    chat = ChatRef.parse(text)
    explicit = ":group:" in text or ":direct:" in text
    for row in await chat_activity(store):
        seen = ChatRef.from_session_key(row.session_key)
        same = seen.channel == chat.channel and seen.chat_id == chat.chat_id \
            and seen.thread_id == chat.thread_id
        if same and (not explicit or seen.kind == chat.kind):
            return seen
    return chat


# --------------------------------------------------------------------------- CLI


async def _open_existing(config: Config) -> Store | None:
    from bridge.store import Store

    if not Store.exists(config):
        return None
    return await Store.connect(config)


def cmd_chats(args: Any) -> int:
    """``palaver chats [--channel C] [--kind K] [--json]``."""
    from bridge.cli import EXIT_OK
    from bridge.config.load import load_for_cli

    config, _path = load_for_cli(args)

    async def run() -> list[ChatInfo]:
        store = await _open_existing(config)
        if store is None:
            return []
        try:
            return await list_chats(config, store, channel=args.channel, kind=args.kind)
        finally:
            await store.close()

    rows = asyncio.run(run())
    if args.json:
        for r in rows:
            print(json.dumps(asdict(r), ensure_ascii=False))
    else:
        print(format_chats(rows))
    return EXIT_OK


def cmd_chats_model(args: Any) -> int:
    """``palaver chats model CHAT REF [--channel|--default] [--clear] [--dry-run]``."""
    from bridge.cli import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK
    from bridge.config.commands import _edit_target, parse_value
    from bridge.config.edit import EditError, InvalidEditError
    from bridge.config.load import ConfigError, load_for_cli

    scope: Scope = args.scope or "chat"
    try:
        if args.clear == (args.ref is not None):
            raise ChatError("give REF to pin, or --clear to remove the pin")
        path = _edit_target(args)
        try:
            config, _ = load_for_cli(args)
        except ConfigError:  # the edit may be what fixes the file
            config = _lenient(path)

        async def find() -> ChatRef:
            store = await _open_existing(config)
            if store is None:
                return ChatRef.parse(args.chat)
            try:
                return await resolve_chat(store, args.chat)
            finally:
                await store.close()

        chat = asyncio.run(find())
        ref = parse_value(args.ref) if args.ref is not None else None
        result = pin_model(path, chat, ref, scope, clear=args.clear, dry_run=args.dry_run)
    except InvalidEditError as exc:
        print(exc.error.render(), file=sys.stderr)
        print("nothing was written", file=sys.stderr)
        return EXIT_CONFIG
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        return EXIT_CONFIG
    except (ChatError, EditError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if args.dry_run:
        print(result.edit.diff(), end="")
    print(result.message)
    if not args.dry_run and result.edit.changed:
        print("a running Palaver picks it up by itself (hot reload); a chat's own /model "
              "choice still outranks it (`palaver chats reset CHAT`)", file=sys.stderr)
    return EXIT_OK


def palaver_running(config: Config) -> bool:
    """Whether a ``palaver run`` serves this config's store now: on SQLite, one holds its
    data directory; on PostgreSQL, a registered process renewed its lease lately."""
    from bridge.lock import DataDirBusy, run_lock
    from bridge.store import database_url

    if database_url(config) is not None:
        return asyncio.run(_processes_alive(config))
    if not config.data_dir.exists():
        return False
    lock = run_lock(config.data_dir)
    try:
        lock.acquire()
    except DataDirBusy:
        return True
    except OSError:
        return False
    lock.release()
    return False


async def _processes_alive(config: Config) -> bool:
    from bridge.store import Store
    from bridge.store.coord import DB_NOW
    from bridge.store.sql import val_body

    try:
        store = await Store.connect(config)
    except Exception:  # unreachable: nothing can be said about running processes
        return False
    try:
        fresh = await store.read_with(val_body(
            f"SELECT COUNT(*) FROM processes WHERE heartbeat_at > {DB_NOW} - ?",
            float(config.store.leaseSeconds)))
        return bool(fresh)
    finally:
        await store.close()


def cmd_chats_reset(args: Any) -> int:
    """``palaver chats reset CHAT``: clear the chat's stored ``/model`` choice."""
    from bridge.cli import EXIT_FAILURE, EXIT_OK
    from bridge.config.load import load_for_cli

    config, _path = load_for_cli(args)
    try:
        ChatRef.parse(args.chat)
    except ChatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE

    async def run() -> tuple[ChatRef, bool]:
        store = await _open_existing(config)
        if store is None:
            return ChatRef.parse(args.chat), False
        try:
            chat = await resolve_chat(store, args.chat)
            return chat, await reset_choice(store, chat)
        finally:
            await store.close()

    chat, had = asyncio.run(run())
    if not had:
        print(f"{chat} has no /model choice of its own")
        return EXIT_OK
    nxt = next_model(config, chat)
    print(f"cleared the /model choice of {chat}; it now uses {nxt.ref or 'none'} — "
          f"{nxt.source}")
    if palaver_running(config):
        print("the running Palaver applies it within a few seconds", file=sys.stderr)
    return EXIT_OK
