"""Find, parse and validate the JSON5 config into a frozen :class:`Config`.

The steps, each of which reports user errors as a :class:`ConfigError` naming the file,
the dotted path and what was expected:

1. parse JSON5 (syntax errors as ``file:line:column``);
2. replace ``${VAR}`` in every string from the environment (``$${`` is a literal ``${``);
3. validate the file's own tree with pydantic (unknown keys get a "did you mean");
4. merge the built-in hosted catalog (``models.mode: "merge"``), a provider in the file
   overriding the built-in one of the same id field by field;
5. check every model ref in the tree against the merged providers and aliases.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import json5
from pydantic import BaseModel, SecretStr, ValidationError

from bridge.config.resolve import UnknownModelError, resolve_ref, split_ref
from bridge.config.schema import (
    ChannelConfig,
    Config,
    ModelSelection,
    ModelsSection,
    ProviderDef,
)
from bridge.models.catalog import BUILTIN_KEY_ENV, builtin_provider_data
from bridge.secrets import (
    AUTH_VALUE,
    BEARER_IN_TEXT,
    MIN_SECRET_LENGTH,
    REDACTED,
    SECRET_QUERY,
    URL_PASSWORD,
    is_auth_header,
    is_headers_key,
    is_secret_key,
)

log = logging.getLogger(__name__)

CONFIG_FILENAME = "palaver.json5"
CONFIG_ENV = "PALAVER_CONFIG"

Loc = tuple[str | int, ...]


# --------------------------------------------------------------------------- errors


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a config: where (dotted path) and what was expected."""

    where: str
    message: str
    line: int | None = None
    column: int | None = None


class ConfigError(Exception):
    """A user error in the configuration (shown as a message, never a traceback).

    ``str(err)`` has one line per problem: ``file[:line:col]: dotted.path: message``.
    """

    def __init__(self, message: str = "", *, file: Path | str | None = None,
                 where: str = "", problems: Sequence[Problem] | None = None) -> None:
        self.file = str(file) if file is not None else None
        self.problems: list[Problem] = list(problems) if problems else [Problem(where, message)]
        super().__init__(self.render())

    def render(self) -> str:
        """Every problem, one per line, each naming the file and path."""
        lines = []
        for p in self.problems:
            head = self.file or "<built-in defaults>"
            if p.line is not None:
                head += f":{p.line}:{p.column or 0}"
            lines.append(f"{head}: {p.where}: {p.message}" if p.where else f"{head}: {p.message}")
        return "\n".join(lines)


def format_loc(loc: Loc) -> str:
    """``("agents", "defaults", "model", "fallbacks", 1)`` -> ``agents.defaults.model.fallbacks[1]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part)}]"
    return out


# --------------------------------------------------------------------------- finding


def find_config_path(explicit: str | None, *, env: Mapping[str, str] | None = None,
                     cwd: Path | None = None) -> Path | None:
    """``--config``, else ``$PALAVER_CONFIG``, else ``./palaver.json5``, else
    ``~/.palaver/palaver.json5``; None when there is no file (built-in defaults).

    A path the user named (flag or variable) that does not exist is a :class:`ConfigError`.
    """
    env = os.environ if env is None else env
    for named, source in ((explicit, "--config"), (env.get(CONFIG_ENV), f"${CONFIG_ENV}")):
        if named:
            path = Path(named).expanduser()
            if not path.exists():
                raise ConfigError(f"config file not found (named by {source})", file=path)
            if path.is_dir():
                raise ConfigError(f"is a directory, expected a JSON5 file (named by {source})",
                                  file=path)
            return path
    for candidate in ((cwd or Path.cwd()) / CONFIG_FILENAME,
                      Path("~/.palaver").expanduser() / CONFIG_FILENAME):
        if candidate.is_file():
            return candidate
    return None


# --------------------------------------------------------------------------- loading


def load_config(path: Path | None, *, env: Mapping[str, str] | None = None) -> Config:
    """Load and validate ``path`` (None: built-in defaults) into a frozen Config.

    Raises :class:`ConfigError` for anything wrong with the file.
    """
    env = os.environ if env is None else env
    if path is None:
        return _finish({}, file=None, env=env)
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("config file not found", file=path) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text ({exc.reason} at byte {exc.start})",
                          file=path) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", file=path) from None
    return load_config_text(text, file=path, env=env)


def load_config_text(text: str, *, file: Path | str | None = None,
                     env: Mapping[str, str] | None = None) -> Config:
    """Like :func:`load_config` for JSON5 text already read (``file`` names it in errors)."""
    env = os.environ if env is None else env
    label = file if file is not None else "<config>"
    raw = _parse_json5(text, label)
    return _finish(raw, file=label, env=env)


def load_for_cli(args: Any) -> tuple[Config, Path | None]:
    """The config a CLI command should use (``args.config`` or the usual places)."""
    path = find_config_path(getattr(args, "config", None))
    return load_config(path), path


def load_for_cli_or_report(args: Any) -> tuple[Config, Path | None] | None:
    """Like :func:`load_for_cli`; on a ConfigError, None after printing the rendered
    error to stderr (the command then exits with ``bridge.cli.EXIT_CONFIG``)."""
    try:
        return load_for_cli(args)
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        return None


def _parse_json5(text: str, file: Path | str) -> dict[str, Any]:
    if not text.strip():
        raise ConfigError("the file is empty (expected a JSON5 object: { ... })", file=file)
    try:
        data = json5.loads(text, allow_duplicate_keys=False)
    except ValueError as exc:
        raise ConfigError(file=file, problems=[_syntax_problem(str(exc), text)]) from None
    if not isinstance(data, dict):
        raise ConfigError(f"expected a JSON5 object at the top level, got {_kind(data)}",
                          file=file)
    return data


def _printable(text: str) -> str:
    """``text`` with control characters escaped (an error stays on one line)."""
    return "".join(
        c if c.isprintable() else (repr(c)[1:-1] if c in "\n\r\t" else f"\\x{ord(c):02x}")
        for c in text)


def _syntax_problem(message: str, text: str) -> Problem:
    message = _printable(message)
    m = re.fullmatch(r"<string>:(\d+) (.*) at column (\d+)", message, re.S)
    if m:
        return Problem("", f"invalid JSON5: {m.group(2)}", int(m.group(1)), int(m.group(3)))
    m = re.fullmatch(r'Duplicate key "(.*)" found in object', message)
    if m:
        # json5 reports no position for duplicates; point at the second occurrence.
        key = re.escape(m.group(1))
        hits = list(re.finditer(rf"""(?<![\w$])(["']?){key}\1\s*:""", text))
        if len(hits) >= 2:
            line, col = _line_col(text, hits[1].start())
            return Problem("", f"invalid JSON5: duplicate key {m.group(1)!r}", line, col)
        return Problem("", f"invalid JSON5: duplicate key {m.group(1)!r}")
    return Problem("", f"invalid JSON5: {message}")


def _line_col(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            int: "a number", float: "a number", type(None): "null"}.get(type(value), "a value")


def _finish(raw: dict[str, Any], *, file: Path | str | None, env: Mapping[str, str]) -> Config:
    problems: list[Problem] = []
    data = _interpolate(raw, (), env, problems)
    if problems:
        raise ConfigError(file=file, problems=problems)
    try:
        own = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(file=file, problems=_translate(exc)) from None
    config = _merge_catalog(own, env)
    problems = _check_providers(config) + _check_refs(config, data)
    if problems:
        raise ConfigError(file=file, problems=problems)
    return config


# --------------------------------------------------------------------------- ${VAR}

_VAR = re.compile(r"\$\$\{|\$\{([^}]*)\}")
_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DROP = object()


def _interpolate(node: Any, loc: Loc, env: Mapping[str, str], problems: list[Problem]) -> Any:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            new = _interpolate(value, (*loc, key), env, problems)
            if new is not _DROP:
                out[key] = new
        return out
    if isinstance(node, list):
        return [_interpolate(v, (*loc, i), env, problems) for i, v in enumerate(node)]
    if not isinstance(node, str) or "${" not in node:
        return node

    missing: list[str] = []

    def substitute(m: re.Match[str]) -> str:
        name = m.group(1)
        if name is None:  # "$${" escapes a literal "${"
            return "${"
        if not _VAR_NAME.fullmatch(name):
            problems.append(Problem(format_loc(loc), f"invalid variable name ${{{name}}} "
                                    "(expected ${NAME} with letters, digits and _)"))
            return ""
        if name not in env:
            missing.append(name)
            return ""
        return env[name]

    result = _VAR.sub(substitute, node)
    if missing and _is_own_builtin_key(loc, missing):
        # models.providers.<built-in>.apiKey: "${ITS_OWN_VAR}" unset just leaves that
        # hosted provider without credentials (as if the file did not mention it).
        log.warning("%s is not set: %s is left out, so provider %r has no credentials",
                    missing[0], format_loc(loc), loc[2])
        return _DROP
    for name in dict.fromkeys(missing):
        problems.append(Problem(format_loc(loc),
                                f"environment variable {name} is not set (used as ${{{name}}})"))
    return result


def _is_own_builtin_key(loc: Loc, missing: list[str]) -> bool:
    """``loc`` is models.providers.<built-in>.apiKey and the one missing variable is that
    provider's own key variable."""
    if len(loc) != 4 or loc[0] != "models" or loc[1] != "providers" or loc[3] != "apiKey":
        return False
    own = BUILTIN_KEY_ENV.get(loc[2]) if isinstance(loc[2], str) else None
    return own is not None and set(missing) == {own}


# --------------------------------------------------------------------------- pydantic errors

def _translate(exc: ValidationError) -> list[Problem]:
    problems = []
    for err in exc.errors(include_url=False):
        loc: Loc = tuple(err["loc"])
        kind = err["type"]
        if kind == "extra_forbidden" and loc and isinstance(loc[-1], str):
            problems.append(_unknown_key(loc))
            continue
        message = str(err["msg"]).removeprefix("Value error, ")
        if kind == "missing":
            message = f"missing required key {loc[-1]!r}" if loc else "missing required key"
            loc = loc[:-1]
        elif message.startswith("Input should be "):
            message = "expected " + message.removeprefix("Input should be ")
            message += _got(err.get("input"), loc)
        problems.append(Problem(format_loc(loc) or "(top level)", message))
    return problems


def _got(value: Any, loc: Loc) -> str:
    if any(isinstance(part, str) and is_secret_key(part) for part in loc):
        return ""  # never echo something meant to be a secret
    if isinstance(value, dict | list):
        return f", got {_kind(value)}"
    if isinstance(value, str) and len(value) > 40:
        value = value[:37] + "..."
    return f", got {value!r}" if isinstance(value, str | int | float | bool | None) else ""


def _unknown_key(loc: Loc) -> Problem:
    key = loc[-1]
    assert isinstance(key, str)
    model = _model_at(loc[:-1])
    allowed = sorted(model.model_fields) if model is not None else []
    hint = ""
    if allowed:
        close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
        if not close:  # a case slip: "baseURL"
            by_fold = {a.casefold(): a for a in allowed}
            close = [by_fold[key.casefold()]] if key.casefold() in by_fold else []
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        hint += f"; expected one of: {', '.join(allowed)}"
    return Problem(format_loc(loc), f"unknown key {key!r}{hint}")


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The pydantic model class that validates the object at ``loc`` (from Config)."""
    current: Any = Config
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(part) if isinstance(part, str) else None
            if field is None:
                return None
            current = field.annotation
        elif typing.get_origin(current) is dict:
            current = typing.get_args(current)[1]
        elif typing.get_origin(current) is tuple:
            current = typing.get_args(current)[0]
        else:
            return None
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(tp: Any) -> Any:
    """``X | None`` -> ``X``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


# --------------------------------------------------------------------------- catalog merge


def _merge_catalog(own: Config, env: Mapping[str, str]) -> Config:
    file_ids = frozenset(own.models.providers)
    providers: dict[str, ProviderDef] = dict(own.models.providers)
    if own.models.mode == "merge":
        builtin = ModelsSection.model_validate(
            {"providers": builtin_provider_data(env)}).providers
        for pid, base in builtin.items():
            providers[pid] = _overlay_provider(base, providers[pid]) if pid in providers else base
    config = own.model_copy(update={"models": own.models.model_copy(
        update={"providers": providers})})
    config._file_provider_ids = file_ids
    return config


def _overlay_provider(base: ProviderDef, top: ProviderDef) -> ProviderDef:
    merged = _overlay(base, top, skip={"models"})
    if "models" not in top.model_fields_set:
        return merged
    models = {m.id: m for m in base.models}
    for m in top.models:
        models[m.id] = _overlay(models[m.id], m) if m.id in models else m
    return merged.model_copy(update={"models": tuple(models.values())})


def _overlay(base: BaseModel, top: BaseModel, skip: frozenset[str] | set[str] = frozenset()
             ) -> Any:
    """``base`` with every field ``top`` set explicitly, nested models and dicts merged."""
    update: dict[str, Any] = {}
    for name in top.model_fields_set - set(skip):
        new, old = getattr(top, name), getattr(base, name)
        if isinstance(new, BaseModel) and type(new) is type(old):
            new = _overlay(old, new)
        elif isinstance(new, dict) and isinstance(old, dict):
            new = {**old, **new}
        update[name] = new
    return base.model_copy(update=update)


# --------------------------------------------------------------------------- providers


def _check_providers(config: Config) -> list[Problem]:
    """Every provider (after the catalog merge) needs an http(s) baseUrl to be callable."""
    problems = []
    for pid, provider in config.models.providers.items():
        loc = format_loc(("models", "providers", pid, "baseUrl"))
        url = (provider.baseUrl or "").strip()
        if not url:
            builtin = ", ".join(sorted(BUILTIN_KEY_ENV))
            problems.append(Problem(loc, (
                "missing baseUrl: expected the server's URL, e.g. "
                '"http://127.0.0.1:1234/v1" (only the built-in providers '
                f"{builtin} have one by default)")))
            continue
        parts = urlsplit(url)
        try:
            parts.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError:
            problems.append(Problem(loc, f"invalid port in baseUrl {_safe_url(url)!r}"))
            continue
        if parts.scheme not in ("http", "https") or not parts.hostname:
            problems.append(Problem(loc, f"expected an http:// or https:// URL with a host, "
                                    f"got {_safe_url(url)!r}"))
        elif parts.username is not None or parts.password is not None:
            # aiohttp refuses URL credentials next to an Authorization header.
            problems.append(Problem(loc, "credentials in baseUrl are not supported: "
                                    "put the key in apiKey, or a header in headers"))
        elif parts.query or parts.fragment:
            # The API path (/chat/completions ...) is appended to baseUrl.
            problems.append(Problem(loc, "expected a URL without ?query or #fragment "
                                    f"(the API path is appended to it), got {_safe_url(url)!r}"))
    return problems


def _safe_url(url: str) -> str:
    """``url`` for an error message: credentials and query removed, clipped."""
    url = URL_PASSWORD.sub(rf"\1:{REDACTED}@", url).split("?", 1)[0]
    return url if len(url) <= 60 else url[:57] + "..."


# --------------------------------------------------------------------------- model refs


def _check_refs(config: Config, raw: dict[str, Any]) -> list[Problem]:
    problems: list[Problem] = []

    def check(loc: Loc, text: str) -> str | None:
        try:
            return resolve_ref(config, text)
        except UnknownModelError as exc:
            problems.append(Problem(format_loc(loc), str(exc)))
            return None

    def check_selection(loc: Loc, sel: ModelSelection | None) -> None:
        if sel is None:
            return
        seen: dict[str, str] = {}
        if sel.primary is not None:
            # A plain string on disk has no ".primary" to point at.
            ploc = loc if isinstance(_raw_at(raw, loc), str) else (*loc, "primary")
            ref = check(ploc, sel.primary)
            if ref:
                seen[ref] = "the primary"
        for i, text in enumerate(sel.fallbacks):
            floc = (*loc, "fallbacks", i)
            ref = check(floc, text)
            if ref is None:
                continue
            if ref in seen:
                problems.append(Problem(format_loc(floc), f"{ref!r} is named twice "
                                        f"(already {seen[ref]}); expected distinct models"))
            else:
                seen[ref] = f"fallbacks[{i}]"

    defaults = config.agents.defaults
    aliases: dict[str, str] = {}
    for key, entry in defaults.models.items():
        loc: Loc = ("agents", "defaults", "models", key)
        try:
            split_ref(key)
        except UnknownModelError:
            problems.append(Problem(format_loc(loc), f"{key!r} is not a model ref "
                                    "(expected provider/model-id as the key)"))
        else:
            check(loc, key)
        if entry.alias is not None:
            aloc = format_loc((*loc, "alias"))
            folded = entry.alias.strip().casefold()
            if not folded or "/" in folded:
                problems.append(Problem(aloc, f"alias {entry.alias!r} must be a non-empty "
                                        "name without '/'"))
            elif folded in aliases:
                problems.append(Problem(aloc, f"alias {entry.alias!r} is already used by "
                                        f"{aliases[folded]!r}; expected unique aliases"))
            else:
                aliases[folded] = key
    check_selection(("agents", "defaults", "model"), defaults.model)
    if defaults.compaction.model is not None:
        check(("agents", "defaults", "compaction", "model"), defaults.compaction.model)

    for name, pins in config.channels.modelByChannel.items():
        for chat_id, sel in pins.items():
            check_selection(("channels", "modelByChannel", name, chat_id), sel)
    for name in type(config.channels).model_fields:
        chan = getattr(config.channels, name)
        if chan is None or name == "modelByChannel":
            continue
        base: Loc = ("channels", name)
        check_selection((*base, "model"), getattr(chan, "model", None))
        if not isinstance(chan, ChannelConfig):
            continue
        for gid, group in chan.groups.items():
            check_selection((*base, "groups", gid, "model"), group.model)
            for tid, topic in group.topics.items():
                check_selection((*base, "groups", gid, "topics", tid, "model"), topic.model)
        for pid, chat in chan.direct.items():
            check_selection((*base, "direct", pid, "model"), chat.model)
    return problems


def _raw_at(raw: Any, loc: Loc) -> Any:
    for part in loc:
        if isinstance(raw, dict) and part in raw:
            raw = raw[part]
        elif isinstance(raw, list) and isinstance(part, int) and part < len(raw):
            raw = raw[part]
        else:
            return None
    return raw


# --------------------------------------------------------------------------- redaction

# The marker, the secret-named keys, the credential headers and the secret shapes in URLs
# and text are bridge.secrets'; this part walks the config tree with them.


def _collect_secrets(config: Config) -> list[str]:
    """Every secret value in ``config`` (longest first): SecretStr fields, values under
    secret-named keys, credential header values (and their token after "Bearer"),
    passwords and secret query parameters in URLs, bearer tokens in any string."""
    ignore = {pid.casefold() for pid in config.models.providers}
    found: set[str] = set()

    def add(value: Any) -> None:
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if value is None or isinstance(value, bool):
            return
        if isinstance(value, dict | list | tuple):
            for v in value.values() if isinstance(value, dict) else value:
                add(v)
            return
        text = str(value).strip()
        # A placeholder key equal to a provider id ("lmstudio") is not worth hiding
        # everywhere: it would blank every model ref of that provider.
        if len(text) >= MIN_SECRET_LENGTH and text.casefold() not in ignore:
            found.add(text)

    def walk(node: Any, key: str | None, parent: str | None) -> None:
        if isinstance(node, SecretStr) or (node is not None and is_secret_key(key)):
            add(node)
            if isinstance(node, str | SecretStr):
                text = node.get_secret_value() if isinstance(node, SecretStr) else node
                m = AUTH_VALUE.match(text)
                if m:
                    add(m.group(2))
            return
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, str(k), key)
        elif isinstance(node, list | tuple):
            for v in node:
                walk(v, key, parent)
        elif isinstance(node, str):
            if key is not None and is_headers_key(parent) and is_auth_header(key, node):
                add(node)
                m = AUTH_VALUE.match(node)
                if m:
                    add(m.group(2))
            for m in URL_PASSWORD.finditer(node):
                add(m.group(2))
            for m in SECRET_QUERY.finditer(node):
                add(m.group(2))
            for m in BEARER_IN_TEXT.finditer(node):
                add(m.group(2))

    walk(config.model_dump(), None, None)
    return sorted(found, key=lambda s: (-len(s), s))


def config_secrets(config: Config) -> list[str]:
    """Every secret value in ``config``, longest first, for log redaction.

    Covers every ``apiKey``, ``botToken``, ``webhookSecret`` and any other value under a
    secret-named key (``api_key``, ``token``, ``password``, ... at any depth), credential
    header values (``Authorization``, ``x-api-key``, ``api-key``, … and the token after
    ``Bearer``), passwords and ``key``/``token``/``sig`` query parameters in URLs.  Values
    shorter than ``MIN_SECRET_LENGTH`` or equal to a provider id are left out.  Call it
    again after each reload: the set changes with the config.
    """
    return _collect_secrets(config)


def redacted(config: Config) -> dict[str, Any]:
    """The whole config as JSON-ready data with every secret replaced by ``[REDACTED]``.

    Hidden: SecretStr fields; any value under a secret-named key at any depth (names are
    compared casefolded without ``_``/``-``: apiKey, api_key, x-api-key, token, secret,
    password, authorization, ...); credential values in any ``...headers`` object; URL
    passwords and secret query parameters; and every secret value found anywhere, wherever
    else it appears in a string.
    """
    secrets = _collect_secrets(config)

    def scrub_text(text: str) -> str:
        for secret in secrets:
            text = text.replace(secret, REDACTED)
        text = URL_PASSWORD.sub(rf"\1:{REDACTED}@", text)
        text = SECRET_QUERY.sub(rf"\1{REDACTED}", text)
        return BEARER_IN_TEXT.sub(rf"\1 {REDACTED}", text)

    def walk(node: Any, key: str | None, parent: str | None) -> Any:
        if isinstance(node, SecretStr):
            return REDACTED
        if node is not None and is_secret_key(key):
            return REDACTED
        if isinstance(node, str) and key is not None and is_headers_key(parent) \
                and is_auth_header(key, node):
            return REDACTED
        if isinstance(node, dict):
            return {k: walk(v, str(k), key) for k, v in node.items()}
        if isinstance(node, list | tuple):
            return [walk(v, key, parent) for v in node]
        if isinstance(node, str):
            return scrub_text(node)
        return node

    return walk(config.model_dump(), None, None)
