"""``palaver config import-openclaw FILE``: a Palaver config from an OpenClaw openclaw.json.

What carries over: ``models`` (providers and their models; Palaver's schema follows
OpenClaw's), ``agents.defaults`` (model, fallbacks, aliases and params), the Telegram and
WhatsApp settings Palaver has (token, policies, allowlists, groups, topics, direct
entries, chunk and media limits, webhook), and ``channels.modelByChannel`` for those two
channels.  Everything else is dropped, and every dropped key is listed with the reason.

How: the OpenClaw tree is first adapted where the two differ on purpose (one account per
channel, ``groupAllowFrom`` copied into each group's ``allowFrom`` so no group becomes
more open, numeric ids as strings, env secret references as ``${VAR}``), then validated
by Palaver's own loader; each key the loader rejects is dropped with the loader's words,
and it runs again until the config loads.  Secret values are copied but never printed.
"""

from __future__ import annotations

import copy
import json
import re
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import json5

from bridge.config.edit import EditError, format_path, parse_path
from bridge.config.load import ConfigError, load_config_text

CHANNELS = ("telegram", "whatsapp")
_SECTIONS = ("models", "agents", "channels")
_ID_LISTS = ("allowFrom", "groupAllowFrom", "owners")


@dataclass
class ImportResult:
    """The Palaver config built from an OpenClaw one, and what was left behind."""

    data: dict[str, Any]
    dropped: list[tuple[str, str]] = field(default_factory=list)  # (path, why)
    notes: list[str] = field(default_factory=list)

    def text(self, source: str) -> str:
        """The config as JSON5 text, with a header naming the source and the drops."""
        lines = [f"// Imported from {source} by `palaver config import-openclaw` on "
                 f"{time.strftime('%Y-%m-%d')}.",
                 "// Check it with `palaver config validate`."]
        if self.dropped:
            lines.append("// Left out (OpenClaw settings Palaver does not have):")
            lines.extend(f"//   {path}: {why}" for path, why in self.dropped)
        return "\n".join(lines) + "\n" + json.dumps(self.data, indent=2,
                                                    ensure_ascii=False) + "\n"


def import_openclaw(raw: Mapping[str, Any], *, env: Mapping[str, str] | None = None
                    ) -> ImportResult:
    """Build a Palaver config tree from a parsed openclaw.json (never raises for what is
    in it: what Palaver cannot take is dropped and listed)."""
    result = ImportResult({})
    data: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _SECTIONS:
            data[key] = copy.deepcopy(value)
        else:
            result.dropped.append((key, "not a Palaver setting"))
    _adapt_agents(data, result)
    _adapt_channels(data, result)
    _secret_refs(data, (), result)
    _validate_dropping(data, result, env)
    result.data = data
    return result


# --------------------------------------------------------------------------- adapting


def _adapt_agents(data: dict[str, Any], result: ImportResult) -> None:
    agents = data.get("agents")
    if not isinstance(agents, dict):
        return
    for key in list(agents):
        if key != "defaults":
            why = ("Palaver runs one agent: agents.defaults" if key == "list"
                   else "not a Palaver setting")
            result.dropped.append((f"agents.{key}", why))
            del agents[key]


def _adapt_channels(data: dict[str, Any], result: ImportResult) -> None:
    channels = data.get("channels")
    if not isinstance(channels, dict):
        return
    for name in list(channels):
        if name in (*CHANNELS, "modelByChannel"):
            continue
        why = ("Palaver has no such channel" if name != "defaults"
               else "set groupPolicy on each channel instead")
        result.dropped.append((f"channels.{name}", why))
        del channels[name]
    pins = channels.get("modelByChannel")
    if isinstance(pins, dict):
        for name in list(pins):
            if name not in CHANNELS:
                result.dropped.append((f"channels.modelByChannel.{name}",
                                       "Palaver has no such channel"))
                del pins[name]
    for name in CHANNELS:
        chan = channels.get(name)
        if isinstance(chan, dict):
            _one_account(chan, f"channels.{name}", result)
            _ids_as_strings(chan)
            _group_allow_from(chan, f"channels.{name}", result)


def _one_account(chan: dict[str, Any], where: str, result: ImportResult) -> None:
    """Palaver runs one account per channel: the default (or only) one is merged in."""
    accounts = chan.pop("accounts", None)
    default = chan.pop("defaultAccount", None)
    if not isinstance(accounts, dict) or not accounts:
        if default is not None:
            result.dropped.append((f"{where}.defaultAccount", "Palaver runs one account "
                                   "per channel"))
        return
    chosen = default if default in accounts else (
        "default" if "default" in accounts else next(iter(accounts)) if len(accounts) == 1
        else None)
    for account_id in accounts:
        if account_id != chosen:
            result.dropped.append((f"{where}.accounts.{account_id}",
                                   "Palaver runs one account per channel (run another "
                                   "Palaver with its own config for this one)"))
    if chosen is not None and isinstance(accounts[chosen], dict):
        chan.update(accounts[chosen])
        result.notes.append(f"{where}: account {chosen!r} became the channel's settings")


def _ids_as_strings(node: Any) -> None:
    """Telegram ids may be numbers in OpenClaw; Palaver's lists hold strings."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _ID_LISTS and isinstance(value, list):
                node[key] = [str(v) if isinstance(v, int | float) and not isinstance(v, bool)
                             else v for v in value]
            else:
                _ids_as_strings(value)


def _group_allow_from(chan: dict[str, Any], where: str, result: ImportResult) -> None:
    """OpenClaw's ``groupAllowFrom`` (who may talk in groups) becomes each group's
    ``allowFrom`` (Palaver gates group senders per group), so no group gets more open."""
    senders = chan.pop("groupAllowFrom", None)
    if not isinstance(senders, list) or not senders:
        return
    groups = chan.setdefault("groups", {})
    if not isinstance(groups, dict):
        return
    if "*" not in groups and chan.get("groupPolicy") == "open":
        groups["*"] = {}
    for entry in groups.values():
        if isinstance(entry, dict) and "allowFrom" not in entry:
            entry["allowFrom"] = list(senders)
    result.notes.append(f"{where}.groupAllowFrom: copied into each group's allowFrom")


_SECRET_REF_ENV = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _secret_refs(node: Any, loc: tuple[str | int, ...], result: ImportResult) -> None:
    """``{source: "env", id: "VAR"}`` secret references become ``"${VAR}"``."""
    if not isinstance(node, dict):
        if isinstance(node, list):
            for i, v in enumerate(node):
                _secret_refs(v, (*loc, i), result)
        return
    for key, value in list(node.items()):
        if isinstance(value, dict) and "source" in value and ("id" in value or
                                                               "provider" in value):
            var = value.get("id")
            if value.get("source") == "env" and isinstance(var, str) \
                    and _SECRET_REF_ENV.fullmatch(var):
                node[key] = "${" + var + "}"
            else:
                result.dropped.append((format_path((*loc, key)),
                                       f"a {value.get('source')!s} secret reference Palaver "
                                       "cannot read (set it with `palaver config set "
                                       "... --env VAR`)"))
                del node[key]
        else:
            _secret_refs(value, (*loc, key), result)


# --------------------------------------------------------------------------- validating


class _Placeholders(dict[str, str]):
    """The real environment, and a harmless value for each variable it lacks (the
    import runs where the secrets may not be set)."""

    def __init__(self, env: Mapping[str, str], token_vars: set[str]) -> None:
        super().__init__(env)
        self.token_vars = token_vars
        self.missing: set[str] = set()

    def __contains__(self, key: object) -> bool:
        return True

    def __getitem__(self, key: str) -> str:
        if dict.__contains__(self, key):
            return dict.__getitem__(self, key)
        self.missing.add(key)
        return "1000000000:" + "A" * 35 if key in self.token_vars else "placeholder_00"


def _vars(node: Any, key: str | None = None) -> Iterator[tuple[str, str | None]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _vars(v, str(k))
    elif isinstance(node, list):
        for v in node:
            yield from _vars(v, key)
    elif isinstance(node, str):
        for m in re.finditer(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", node):
            yield m.group(1), key


def _validate_dropping(data: dict[str, Any], result: ImportResult,
                       env: Mapping[str, str] | None) -> None:
    import os

    env = os.environ if env is None else env
    for _round in range(200):
        tokens = {name for name, key in _vars(data) if key == "botToken"}
        fake_env = _Placeholders(env, tokens)
        try:
            load_config_text(json.dumps(data), file="<import>", env=fake_env)
        except ConfigError as exc:
            progress = False
            for problem in exc.problems:
                in_list = "[" in problem.where and re.search(r"\[\d+\]", problem.where)
                if in_list and progress:
                    continue  # list indices shift once one entry goes: next round
                progress |= _drop_for(data, problem.where, problem.message, result)
                if in_list and progress:
                    break
            if not progress:
                raise EditError("cannot make a valid Palaver config of it: "
                                + "; ".join(f"{p.where}: {p.message}" for p in exc.problems)
                                ) from None
            continue
        for name in sorted(fake_env.missing):
            result.notes.append(f"set {name} in the environment before `palaver run` "
                                "(the config refers to it)")
        return
    raise EditError("cannot make a valid Palaver config of it")  # pragma: no cover


def _drop_for(data: dict[str, Any], where: str, message: str, result: ImportResult) -> bool:
    """Drop the key a problem names (or what must go with it); False if nothing to drop."""
    try:
        parts = list(parse_path(where)) if where and where != "(top level)" else []
    except EditError:
        return False
    if not parts:
        return False
    why = "Palaver has no such setting" if message.startswith("unknown key") else message
    # A provider speaking an API Palaver does not: the whole provider goes (dropping
    # only "api" would switch it to another protocol silently).
    if len(parts) >= 4 and parts[:2] == ["models", "providers"] and parts[3] in (
            "api", "baseUrl"):
        parts = parts[:3]
    while parts and not _exists(data, parts):
        parts = parts[:-1]  # a missing required key: the object holding it goes
    if not parts:
        return False
    _remove(data, parts)
    result.dropped.append((format_path(parts), why))
    return True


def _exists(data: Any, parts: list[str | int]) -> bool:
    node = data
    for part in parts:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            return False
    return True


def _remove(data: Any, parts: list[str | int]) -> None:
    node = data
    for part in parts[:-1]:
        node = node[part]
    del node[parts[-1]]


# --------------------------------------------------------------------------- CLI


def cmd_import_openclaw(args: Any) -> int:
    """``palaver config import-openclaw FILE [--output PATH] [--force]``."""
    from bridge.cli import EXIT_FAILURE, EXIT_OK
    from bridge.config.load import CONFIG_FILENAME

    source = Path(args.file)
    try:
        raw = json5.loads(source.read_text("utf-8"))
    except OSError as exc:
        print(f"error: cannot read {source}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILURE
    except ValueError as exc:
        print(f"error: {source}: invalid JSON5: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if not isinstance(raw, dict):
        print(f"error: {source}: expected a JSON5 object", file=sys.stderr)
        return EXIT_FAILURE
    try:
        result = import_openclaw(raw)
    except EditError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    target = Path(args.output or getattr(args, "config", None) or CONFIG_FILENAME).expanduser()
    text = result.text(str(source))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("w" if args.force else "x", encoding="utf-8") as fh:
            fh.write(text)
    except FileExistsError:
        print(f"error: {target} already exists; not overwriting it (--force to replace, "
              "--output for another path)", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:
        print(f"error: cannot write {target}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILURE
    target.chmod(0o600)  # it may hold the bot token and API keys
    print(f"wrote {target}")
    if result.dropped:
        print(f"left out {len(result.dropped)} key(s):")
        for path, why in result.dropped:
            print(f"  {path}: {why}")
    for note in result.notes:
        print(f"note: {note}")
    print(f"next: `palaver config validate --config {target}`")
    return EXIT_OK
