"""Chat commands (/new /reset /model /models /status /stop /help) and per-chat model choice.

Commands are answered by Palaver itself and never reach a model.  ``/cmd@botname`` is
accepted (the channel decides whether it was addressed to this bot).  :data:`COMMANDS` is
the one table of them: the handlers, the ``/help`` text and the command menu a chat app
shows (:data:`COMMAND_MENU`, Telegram's ``setMyCommands``) all come from it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from bridge.config.resolve import UnknownModelError, is_owner
from bridge.durations import spoken
from bridge.envelope import ChatAddress
from bridge.model_policy import choosable_refs, may_choose
from bridge.models.base import Attempt, ErrorClass
from bridge.store.pairing import APPROVED_NOTICE, DENIED_NOTICE
from bridge.store.records import PairingRequest, StoredMessage

if TYPE_CHECKING:
    from bridge.chats import Scope
    from bridge.config.schema import Config
    from bridge.store import Store

log = logging.getLogger(__name__)

_COMMAND = re.compile(r"^/([A-Za-z][A-Za-z0-9_]{0,31})(?:@[A-Za-z0-9_.+-]+)?(?:\s+(.*))?$", re.S)
MODEL_SETTING = "model"


def parse_command(text: str) -> tuple[str, str] | None:
    """``("model", "Sonnet")`` for ``"/model@my_bot Sonnet"``; ``None`` if not a command."""
    match = _COMMAND.match(text.strip())
    if match is None:
        return None
    return match.group(1).lower(), (match.group(2) or "").strip()


def is_command(text: str) -> bool:
    """Is ``text`` a command (answered by Palaver, batched alone)?"""
    return parse_command(text) is not None


def changes_chat(text: str) -> bool:
    """Is ``text`` a command that changes the chat (``/new``, ``/reset``, ``/model NAME``)?

    In a group only senders who may talk to the bot may send these (see
    :mod:`bridge.access`); read-only commands (``/help``, ``/status``, ``/models``, a bare
    ``/model``) and unknown ones are open to everyone the group admits."""
    parsed = parse_command(text)
    if parsed is None:
        return False
    command = _BY_NAME.get(parsed[0])
    return command is not None and command.changes(parsed[1])


# ------------------------------------------------------------------------ model choice


class ModelSource(StrEnum):
    """Where a chat's model comes from (shown by /model and /status)."""

    SESSION_OVERRIDE = "session override"  # palaver chat --model
    CHAT_CHOICE = "this chat's /model choice"
    CONFIG = "config"


@dataclass(frozen=True, slots=True)
class ModelChoice:
    """The candidates for a chat's next turn and where the first one came from."""

    candidates: tuple[str, ...]  # canonical refs, primary first
    source: ModelSource


async def choose_models(
    config: Config,
    store: Store,
    message: StoredMessage,
    *,
    override: str | None = None,
) -> ModelChoice:
    """Precedence: a session override (``palaver chat --model``), this chat's ``/model``
    choice, then the config (topic, group/direct, channel, defaults).  The configured
    fallbacks always follow the chosen model."""
    a = message.address
    selection = config.selection_for(
        a.channel, chat_kind=a.chat_kind.value, chat_id=a.chat_id,
        sender_id=message.sender_id, thread_id=a.thread_id)
    try:
        configured = config.candidates(selection)
    except UnknownModelError as exc:
        log.warning("configured model for %s does not resolve: %s", message.session_key, exc)
        configured = []
    stored = await store.chat_setting(message.session_key, MODEL_SETTING)
    for source, wanted in ((ModelSource.SESSION_OVERRIDE, override),
                           (ModelSource.CHAT_CHOICE, stored)):
        if not wanted:
            continue
        try:
            ref = config.resolve_ref(wanted)
        except UnknownModelError as exc:
            log.warning("%s %r for %s no longer resolves (%s); using the config",
                        source, wanted, message.session_key, exc)
            continue
        rest = [r for r in configured if r != ref]
        return ModelChoice((ref, *rest), source)
    return ModelChoice(tuple(configured), ModelSource.CONFIG)


def _label(config: Config, ref: str) -> str:
    aliases = {v: k for k, v in config.aliases().items()}
    return f"{aliases[ref]} ({ref})" if ref in aliases else ref


def model_choices(config: Config, *, limit: int = 40, owner: bool = False) -> list[str]:
    """Refs the asker may pick: aliased ones first, then every listed model (for a
    sender who is not an owner, only what ``agents.defaults.modelPolicy`` allows)."""
    return choosable_refs(config, owner=owner)[:limit]


# ------------------------------------------------------------------------------ commands


ONLY_OPERATOR = "Only the operator can do that."


@dataclass(frozen=True, slots=True)
class CommandServices:
    """What owner commands need from the running process (each None when it is absent)."""

    config_path: Path | None = None  # the file the live config is loaded from
    reload_config: Callable[[], Awaitable[object]] | None = None  # apply an edit at once
    # tell(address, session_key, text) -> whether this process serves that chat
    tell: Callable[[ChatAddress, str, str], Awaitable[bool]] | None = None


@dataclass(slots=True)
class CommandContext:
    """What a command handler may read: the live config, the store, the message."""

    config: Config
    store: Store
    message: StoredMessage
    override: str | None = None  # the session's model override (``palaver chat --model``)
    services: CommandServices | None = None  # None: none (no config file, no core)

    @property
    def running(self) -> CommandServices:
        """The services of the process answering this command."""
        return self.services if self.services is not None else CommandServices()

    @property
    def owner(self) -> bool:
        """Is the sender an owner of this channel (``channels.<name>.owners``)?"""
        m = self.message
        return is_owner(self.config, m.address.channel, m.sender_id)


Handler = Callable[[CommandContext, str], Awaitable[str]]


@dataclass(frozen=True, slots=True)
class Command:
    """One chat command: its name, what it does, and the handler answering it."""

    name: str
    handler: Handler
    menu: str | None  # one line for a chat app's command menu; None: not in the menu
    help: str | None  # its /help line; None: not listed (covered by another's line)
    # Does it change the chat with this argument?  (Read-only commands never do.)
    changes: Callable[[str], bool] = lambda _arg: False  # default: read-only
    owner_only: bool = False  # listed under the operator's commands in /help
    owner_help: str | None = None  # a further line there, for what only owners may do


def _always(_arg: str) -> bool:
    return True


def _with_argument(arg: str) -> bool:
    return bool(arg)


async def run_command(ctx: CommandContext, name: str, arg: str) -> str:
    """The reply text for one command."""
    command = _BY_NAME.get(name)
    if command is None:
        return f"Unknown command /{name}. Send /help for the list."
    return await command.handler(ctx, arg)


def help_text(*, owner: bool = False) -> str:
    """The reply to /help: every listed command with its line (and for an owner, the
    operator's commands)."""
    text = "Commands:\n" + "\n".join(
        f"/{c.name} — {c.help}" for c in COMMANDS if c.help is not None and not c.owner_only)
    if owner:
        lines = [f"/{c.name} — {c.owner_help}" for c in COMMANDS if c.owner_help]
        lines += [f"/{c.name} — {c.help}" for c in COMMANDS
                  if c.help is not None and c.owner_only]
        text += "\nOperator commands (you are an owner here):\n" + "\n".join(lines)
    return text


async def _new(ctx: CommandContext, _arg: str) -> str:
    await ctx.store.end_session(ctx.message.session_key)
    return "Started a new conversation. Earlier messages are forgotten."


_SCOPES: dict[str, Scope] = {"--chat": "chat", "--channel": "channel",
                             "--default": "default"}
_CLEAR_WORDS = ("default", "reset", "clear")


async def _model(ctx: CommandContext, arg: str) -> str:
    config, key = ctx.config, ctx.message.session_key
    words = arg.split()
    flags = list(dict.fromkeys(w.lower() for w in words if w.startswith("--")))
    name = " ".join(w for w in words if not w.startswith("--"))
    unknown = [f for f in flags if f not in _SCOPES]
    if unknown:
        return f"Unknown option {unknown[0]} (expected --chat, --channel or --default)."
    if len(flags) > 1:
        return "Choose one of --chat, --channel or --default."
    scope = _SCOPES[flags[0]] if flags else "chat"
    if scope != "chat":
        if not ctx.owner:
            return ONLY_OPERATOR
        if not name:
            return f"Usage: /model <name> {flags[0]}"
        return await _pin(ctx, name, scope)
    if not name:
        choice = await choose_models(config, ctx.store, ctx.message, override=ctx.override)
        if not choice.candidates:
            current = "none configured"
        else:
            current = f"{_label(config, choice.candidates[0])} — {choice.source}"
        lines = [f"Current model: {current}"]
        if len(choice.candidates) > 1:
            lines.append("Fallbacks: " + ", ".join(choice.candidates[1:]))
        choices = model_choices(config, limit=15, owner=ctx.owner)
        if choices:
            lines.append("Choose with /model <name>: " + ", ".join(
                _label(config, r) for r in choices))
        lines.append("/model default goes back to the configured model.")
        if ctx.owner:
            lines.append("As an owner: /model <name> --channel or --default changes the "
                         "config.")
        return "\n".join(lines)
    if name.lower() in _CLEAR_WORDS:
        await ctx.store.set_chat_setting(key, MODEL_SETTING, None)
        choice = await choose_models(config, ctx.store, ctx.message, override=ctx.override)
        now = _label(config, choice.candidates[0]) if choice.candidates else "none configured"
        return f"This chat uses the configured model again: {now}"
    try:
        ref = config.resolve_ref(name)
    except UnknownModelError as exc:
        return f"Unknown model {name!r}: {exc}. Send /models for the list."
    if not may_choose(config, ref, owner=ctx.owner):
        return (f"{_label(config, ref)} is not one of the models you can choose here. "
                "Send /models for the list.")
    await ctx.store.set_chat_setting(key, MODEL_SETTING, ref)
    return f"This chat now uses {_label(config, ref)}."


async def _pin(ctx: CommandContext, name: str, scope: Scope) -> str:
    """An owner's ``/model NAME --channel|--default``: written to the config file through
    the edit engine (validated, atomic, refused if the file changed meanwhile)."""
    from bridge.chats import ChatError, ChatRef, pin_model
    from bridge.config.edit import EditError
    from bridge.config.load import ConfigError

    running = ctx.running
    if running.config_path is None:
        return ("Nothing changed: this Palaver runs without a config file to write "
                "(edit the config, or use `palaver chats model`).")
    clear = name.lower() in _CLEAR_WORDS
    if clear and scope == "default":
        return "The default model stays; choose another with /model <name> --default."
    if not clear:
        try:
            ctx.config.resolve_ref(name)
        except UnknownModelError as exc:
            return f"Unknown model {name!r}: {exc}. Send /models for the list."
    chat = ChatRef.from_session_key(ctx.message.session_key)
    try:
        result = await asyncio.to_thread(
            pin_model, running.config_path, chat, None if clear else name, scope,
            clear=clear)
    except (ChatError, EditError, ConfigError) as exc:
        return f"Nothing changed: {exc}"
    if result.edit.changed and running.reload_config is not None:
        await running.reload_config()
    log.info("owner %s on %s: /model %s --%s (%s)", ctx.message.sender_id,
             ctx.message.address.channel, name, scope, "; ".join(result.paths) or "no change")
    lines = [result.message[:1].upper() + result.message[1:] + "."]
    stored = await ctx.store.chat_setting(ctx.message.session_key, MODEL_SETTING)
    if stored:
        lines.append(f"This chat's own /model choice ({stored}) still comes first; "
                     "/model default clears it.")
    return "\n".join(lines)


async def _models(ctx: CommandContext, _arg: str) -> str:
    config = ctx.config
    choice = await choose_models(config, ctx.store, ctx.message, override=ctx.override)
    current = choice.candidates[0] if choice.candidates else None
    aliases = {v: k for k, v in config.aliases().items()}
    listed = {f"{pid}/{m.id}": m for pid, p in config.models.providers.items()
              for m in p.models}
    lines = ["Models:"]
    refs = choosable_refs(config, owner=ctx.owner)
    for ref in refs:
        marks = []
        if ref in aliases:
            marks.append(f"alias {aliases[ref]}")
        m = listed.get(ref)
        if m is not None and "image" in m.input:
            marks.append("images")
        if m is not None and m.reasoning:
            marks.append("reasoning")
        prefix = "→" if ref == current else "•"
        lines.append(f"{prefix} {ref}" + (f" ({', '.join(marks)})" if marks else ""))
    allow = config.agents.defaults.modelPolicy.allow
    patterns = [p for p in allow or () if set("*?[") & set(p)] if not ctx.owner else []
    if patterns:
        lines.append("Also any model matching: " + ", ".join(patterns))
    if not refs and not patterns:
        return ("No models are configured." if ctx.owner or not listed
                else "There are no models you can choose here.")
    lines.append("Choose with /model <name or alias>.")
    return "\n".join(lines)


async def _status(ctx: CommandContext, _arg: str) -> str:
    config, store, key = ctx.config, ctx.store, ctx.message.session_key
    choice = await choose_models(config, store, ctx.message, override=ctx.override)
    lines = []
    if choice.candidates:
        lines.append(f"Model: {_label(config, choice.candidates[0])} ({choice.source})")
        if len(choice.candidates) > 1:
            lines.append("Fallbacks: " + ", ".join(choice.candidates[1:]))
    else:
        lines.append("Model: none configured")
    last = await store.last_turn(key)
    if last is None:
        lines.append("Last answer: none yet in this chat.")
    elif last.status == "answered":
        ago = spoken(time.time() - (last.finished_at or last.started_at))
        lines.append(f"Last answer: {last.model_ref} ({ago} ago)")
        failed = [a for a in last.attempts if a.error_class is not None or a.skipped]
        if failed:
            lines.append("It was a fallback: " + "; ".join(
                _attempt_line(config, a) for a in failed))
    else:
        failed = [a for a in last.attempts if a.error_class is not None or a.skipped]
        if failed:
            lines.append("Last turn failed: every model failed")
            lines.extend(f"• {_attempt_line(config, a)}" for a in failed)
        else:
            lines.append(f"Last turn failed: {_turn_failure(last.reason)}")
    if last is not None and last.prompt_tokens_estimate and last.context_window:
        pct = 100 * last.prompt_tokens_estimate / last.context_window
        lines.append(f"Context used: ~{last.prompt_tokens_estimate:,} of "
                     f"{last.context_window:,} tokens ({pct:.0f}%)")
    session = await store.active_session(key)
    if session is not None:
        stats = await store.session_stats(session.id)
        summary = ", earlier turns summarised" if session.summary else ""
        n = stats["turns"]
        lines.append(f"Session: {n} answered turn{'' if n == 1 else 's'} since "
                     f"{spoken(time.time() - session.created_at)} ago{summary}")
    return "\n".join(lines)


# One short reason per error class, in words an operator reads in a chat.  Never the
# provider's own message: error bodies carry internal URLs, org and request ids.
_HUMAN_REASONS: dict[ErrorClass, str] = {
    ErrorClass.UNREACHABLE: "the server could not be reached (down, or no network)",
    ErrorClass.TIMEOUT: "timed out",
    ErrorClass.RATE_LIMITED: "rate limited by the provider (too many requests or quota "
                             "used up)",
    ErrorClass.OVERLOADED: "the server is overloaded or the model is not loaded yet",
    ErrorClass.SERVER_ERROR: "the provider's server failed (an internal error)",
    ErrorClass.AUTH: "the provider refused the API key (missing, wrong or not allowed)",
    ErrorClass.NOT_FOUND: "the provider does not know this model",
    ErrorClass.EMPTY_RESPONSE: "the model gave no answer text (only reasoning, or nothing)",
    ErrorClass.BAD_RESPONSE: "the provider's answer could not be read",
    ErrorClass.CONTEXT_OVERFLOW: "the conversation is too long for the model's context "
                                 "window",
    ErrorClass.BAD_REQUEST: "the provider rejected the request",
    ErrorClass.BUDGET_EXHAUSTED: "the provider's spending budget is used up (not called)",
}
# Palaver's own timeout messages (bridge/models/http.py, errors.py) name the phase.
_TIMEOUT_REASONS = (
    ("first token timeout", "timed out waiting for the first token"),
    ("idle timeout", "the model stopped sending mid-answer (idle timeout)"),
    ("total timeout", "took longer than the total time allowed"),
    ("connect timeout", "timed out connecting to the server"),
)
_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "0.0.0.0", "host.docker.internal"})


def failure_reason(config: Config, attempt: Attempt) -> str:
    """A short human reason for a failed or skipped attempt, from its error class alone
    (and Palaver's own words for which timeout it was) — never the provider's body."""
    cls = attempt.error_class
    if cls is None or (attempt.skipped and cls is not ErrorClass.BUDGET_EXHAUSTED):
        return "cooling down after recent failures (not called)"
    if cls is ErrorClass.TIMEOUT:
        for prefix, words in _TIMEOUT_REASONS:
            if attempt.message.startswith(prefix):
                return words
    if cls is ErrorClass.UNREACHABLE:
        if attempt.message.startswith("invalid baseUrl"):
            return "the provider's baseUrl is not a valid address"
        if _is_local(config, attempt.model_ref):
            return "the local server is not running (nothing answers at its address)"
    return _HUMAN_REASONS.get(cls, "it failed")


def _is_local(config: Config, ref: str) -> bool:
    try:
        base_url = config.model(ref).base_url
    except (UnknownModelError, ValueError):
        return False
    host = (urlsplit(base_url).hostname or "").lower()
    if host in _LOCAL_HOSTS or host.endswith(".local"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _attempt_line(config: Config, attempt: Attempt) -> str:
    cls = attempt.error_class
    word = ("cooling down" if cls is None or (attempt.skipped
                                              and cls is not ErrorClass.BUDGET_EXHAUSTED)
            else cls.value)
    return f"{attempt.model_ref}: {word} ({failure_reason(config, attempt)})"


def _turn_failure(reason: str | None) -> str:
    """A failed turn without model attempts: only Palaver's own fixed words are shown."""
    if reason == "no model is configured":
        return reason
    if reason and reason.startswith("internal error"):
        return "an internal error in Palaver (see its log)"
    return "see Palaver's log"


async def _help(ctx: CommandContext, _arg: str) -> str:
    return help_text(owner=ctx.owner)


# /stop is answered at the door (bridge.conversation), before the session's queue: a stop
# waiting behind the turn it should cancel would come too late.
STOP_COMMAND = "stop"
STOPPED = "Stopped."
NOTHING_RUNNING = "Nothing is running."


def is_stop(text: str) -> bool:
    """Is ``text`` a ``/stop`` (``/stop@thisbot`` arrives with the bot's name stripped)?"""
    parsed = parse_command(text)
    return parsed is not None and parsed[0] == STOP_COMMAND


async def _stop(_ctx: CommandContext, _arg: str) -> str:
    # Only reached for a /stop in the queue: one a process that did not own the chat
    # stored for the owner (bridge.conversation._stop_elsewhere), claimed after the turn
    # it was for had ended on its own.  The door answers every other one.
    return NOTHING_RUNNING


async def _approve(ctx: CommandContext, arg: str) -> str:
    return await _pairing(ctx, arg, approve=True)


async def _deny(ctx: CommandContext, arg: str) -> str:
    return await _pairing(ctx, arg, approve=False)


async def _pairing(ctx: CommandContext, arg: str, *, approve: bool) -> str:
    """An owner's ``/approve CODE`` or ``/deny CODE`` for a pairing request on this
    channel (the operator's terminal names the channel: ``/approve telegram CODE``)."""
    if not ctx.owner:
        return ONLY_OPERATOR
    verb = "approve" if approve else "deny"
    channel = ctx.message.address.channel
    words = arg.split()
    if len(words) == 2 and channel == "console":
        channel, code = words[0], words[1].upper()
    elif words and channel == "console":
        return f"Name the channel: /{verb} telegram CODE (or whatsapp)."
    elif len(words) <= 1:
        code = words[0].upper() if words else ""
    else:
        return f"Usage: /{verb} CODE"
    if not code:
        pending = await ctx.store.pending_pairings(None if channel == "console" else channel)
        if not pending:
            return "No pending pairing requests."
        now = time.time()
        return "\n".join([f"Pending pairing requests (/{verb} CODE):"] + [
            f"• {r.code} — {r.channel} {r.sender_id}"
            + (f" ({r.sender_name})" if r.sender_name else "")
            + f", {max(0, int((r.expires_at - now) // 60))} min left" for r in pending])
    request = (await ctx.store.approve_pairing(channel, code) if approve
               else await ctx.store.deny_pairing(channel, code))
    if request is None:
        return f"No pending, unexpired pairing code {code} on {channel}."
    log.info("owner %s %s pairing of %s on %s", ctx.message.sender_id,
             "approved" if approve else "declined", request.sender_id, channel)
    told = await _tell_requester(ctx, request, APPROVED_NOTICE if approve else DENIED_NOTICE)
    who = request.sender_id + (f" ({request.sender_name})" if request.sender_name else "")
    done = "Approved" if approve else "Declined"
    return (f"{done} {who} on {channel}; "
            + ("they were told." if told else "they will be told when that channel runs."))


async def _tell_requester(ctx: CommandContext, request: PairingRequest, text: str) -> bool:
    """Queue ``text`` for the requester's direct chat; True when this process serves it."""
    from bridge.store.notices import queue_notice

    address, key = await ctx.store.requester_chat(request)
    tell = ctx.running.tell
    if tell is None:
        await queue_notice(ctx.store, address, key, text)
        return False
    return await tell(address, key, text)


CHATS_SHOWN = 15


async def _chats(ctx: CommandContext, _arg: str) -> str:
    """An owner's ``/chats``: this channel's chats, newest first (the terminal: all)."""
    if not ctx.owner:
        return ONLY_OPERATOR
    from bridge.chats import format_chats, list_chats

    channel = ctx.message.address.channel
    rows = await list_chats(ctx.config, ctx.store,
                            channel=None if channel == "console" else channel)
    if not rows:
        return "No chats yet."
    text = "Chats, newest first:\n" + format_chats(rows[:CHATS_SHOWN], short=True)
    if len(rows) > CHATS_SHOWN:
        text += f"\n… and {len(rows) - CHATS_SHOWN} more (`palaver chats` lists them all)."
    return text


async def _usage(ctx: CommandContext, arg: str) -> str:
    from bridge.usage.report import usage_command

    return await usage_command(ctx, arg)


# The one table of chat commands, in menu and /help order.
COMMANDS: tuple[Command, ...] = (
    Command("new", _new, menu="Start a new conversation",
            help="start a fresh conversation (also /reset)", changes=_always),
    Command("reset", _new, menu="Start over (same as /new)", help=None, changes=_always),
    Command("model", _model, menu="Show or switch this chat's model",
            help="show the model; /model <name> to choose one for this chat, /model default",
            changes=_with_argument,
            owner_help="/model <name> --channel or --default writes the config "
                       "(/model default --channel removes the channel's pin)"),

    Command("models", _models, menu="List the models you can use",
            help="list the models you can choose"),
    Command("status", _status, menu="Session, model and context used",
            help="the model in use, the one that answered last, context used"),
    Command("usage", _usage, menu="Messages, tokens and cost",
            help="this chat's messages, tokens and cost today and this month"),
    # Changes the chat: in a group only those the bot may talk to can stop an answer.
    Command(STOP_COMMAND, _stop, menu="Stop the answer being written",
            help="stop the answer being written", changes=_always),
    Command("help", _help, menu="What this bot can do", help="this list"),
    # The operator's (channels.<name>.owners); anyone else is told only they may.
    Command("approve", _approve, menu=None, owner_only=True, changes=_always,
            help="/approve CODE admits a pairing request (they are told); "
                 "/approve lists them"),
    Command("deny", _deny, menu=None, owner_only=True, changes=_always,
            help="/deny CODE declines a pairing request"),
    Command("chats", _chats, menu=None, owner_only=True,
            help="the chats seen lately and the model answering each"),
    # Telegram sends /start when someone opens a chat with the bot.
    Command("start", _help, menu=None, help=None),
)

# (command, description) pairs for a chat app's command menu (Telegram setMyCommands).
COMMAND_MENU: tuple[tuple[str, str], ...] = tuple(
    (c.name, c.menu) for c in COMMANDS if c.menu is not None)

_BY_NAME = {c.name: c for c in COMMANDS}
