"""``palaver init``, ``config validate``, ``config show`` and ``models list``.

Each returns an exit status (the table is in :mod:`bridge.cli`); a user error is one clear
message on stderr, never a traceback.  A config that does not load raises ConfigError,
which ``cli.main`` reports.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bridge.cli import EXIT_FAILURE, EXIT_OK
from bridge.config.load import CONFIG_ENV, CONFIG_FILENAME, load_for_cli, redacted
from bridge.config.resolve import UnknownModelError, split_ref
from bridge.config.schema import Config

STARTER_CONFIG = """\
// Palaver configuration (JSON5: comments and trailing commas are fine).
// Check it with `palaver config validate`; see what Palaver makes of it with
// `palaver config show` and `palaver models list`.  A running Palaver reloads this
// file when you save it (or on SIGHUP).
{
  // Where the store, media and channel sessions live.
  dataDir: "~/.palaver",

  agents: {
    defaults: {
      // A ref is "provider/model-id" (split at the first "/") or an alias below.
      // Hosted fallbacks are used only when their key is set in the environment
      // (ANTHROPIC_API_KEY, OPENAI_API_KEY, OPENROUTER_API_KEY).
      model: { primary: "local/local-model", fallbacks: [] },
      // fallbacks: ["anthropic/claude-sonnet-4-5"],
      models: {
        "local/local-model": { alias: "Local" },
        "anthropic/claude-sonnet-4-5": { alias: "Sonnet" },
      },
      // systemPrompt: "You are a helpful assistant.",
    },
  },

  models: {
    // "merge" adds the built-in hosted providers (anthropic, openai, openrouter);
    // "replace" uses only the providers below.
    mode: "merge",
    providers: {
      // Any OpenAI-compatible server: LM Studio (:1234), Ollama (:11434), vLLM (:8000),
      // LocalAI (:8080), llama.cpp llama-server (:8080).
      local: {
        baseUrl: "http://127.0.0.1:1234/v1",
        api: "openai-completions",  // or "openai-responses", "anthropic-messages"
        // apiKey: "${LOCAL_API_KEY}",
        models: [
          // Use the model id your server reports (GET /v1/models).
          { id: "local-model", name: "Local model", input: ["text"],
            contextWindow: 32768, maxTokens: 4096 },
        ],
      },
    },
  },

  channels: {
    // telegram: {
    //   botToken: "${TELEGRAM_BOT_TOKEN}",
    //   dmPolicy: "pairing",          // pairing | allowlist | open | disabled
    //   allowFrom: [],                // user ids allowed without pairing
    //   groups: { "*": { requireMention: true } },
    // },
    // whatsapp: { dmPolicy: "pairing" },  // then run `palaver whatsapp login`
  },
}
"""


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_FAILURE


def init_path(args: Any, env: Mapping[str, str] | None = None) -> Path:
    """Where ``palaver init`` writes: the PATH argument, else ``--config``, else
    ``$PALAVER_CONFIG``, else ``./palaver.json5`` (the places ``run`` reads from)."""
    env = os.environ if env is None else env
    named = (getattr(args, "path_arg", None) or getattr(args, "config", None)
             or env.get(CONFIG_ENV) or CONFIG_FILENAME)
    return Path(named).expanduser()


def cmd_init(args: Any) -> int:
    """Write the commented starter config; never overwrites an existing file."""
    path = init_path(args)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("x", encoding="utf-8") as fh:
            fh.write(STARTER_CONFIG)
    except FileExistsError:
        return _fail(f"{path} already exists; not overwriting it")
    except OSError as exc:
        return _fail(f"cannot write {path}: {exc.strerror or exc}")
    print(f"wrote {path}")
    print(f"next: edit it, then `palaver config validate --config {path}`")
    return EXIT_OK


def cmd_config_validate(args: Any) -> int:
    """Exit 0 with ``ok: <path>`` when the config is valid, else (from ``cli.main``)
    EXIT_CONFIG with the errors."""
    config, path = load_for_cli(args)
    if path is None:
        print("ok: no config file found; built-in defaults")
    else:
        print(f"ok: {path}")
    if config.default_selection().primary is None:
        print("note: no default model; Palaver will look for a local model server",
              file=sys.stderr)
    return EXIT_OK


def cmd_config_show(args: Any) -> int:
    """Print the resolved config (catalog merged, ``${VAR}`` replaced) as JSON, secrets redacted."""
    config, _path = load_for_cli(args)
    print(json.dumps(redacted(config), indent=2))
    return EXIT_OK


def model_rows(config: Config) -> list[dict[str, str]]:
    """One row per known model: listed by a provider, or named by a ref in the config."""
    selection = config.default_selection()
    roles: dict[str, str] = {}
    for i, text in enumerate((selection.primary, *selection.fallbacks)):
        if not text:
            continue
        try:
            ref = config.resolve_ref(text)
        except UnknownModelError:
            continue
        roles.setdefault(ref, "primary" if i == 0 and selection.primary else f"fallback {i}")

    refs: list[str] = []
    for pid, provider in config.models.providers.items():
        refs.extend(f"{pid}/{m.id}" for m in provider.models)
    # Hosted models the catalog doesn't list but the config names.
    for ref in (*roles, *config.agents.defaults.models):
        if ref not in refs:
            refs.append(ref)

    rows = []
    for ref in refs:
        try:
            split_ref(ref)
            m = config.model(ref)
        except UnknownModelError:
            continue
        provider = config.models.providers[m.provider]
        creds = provider.apiKey is not None or any(
            k.casefold() in ("authorization", "x-api-key", "api-key") for k in m.headers)
        rows.append({
            "default": roles.get(ref, ""),
            "ref": ref,
            "alias": m.alias or "",
            "provider": m.provider,
            "api": m.api,
            "context": f"{m.context_window:,}",
            "input": "+".join(m.input),
            "credentials": "yes" if creds else "no",
        })
    return rows


def cmd_models_list(args: Any) -> int:
    """A table of every model: ref, alias, provider, api, context window, input, credentials."""
    config, _path = load_for_cli(args)
    rows = model_rows(config)
    headers = {"default": "DEFAULT", "ref": "REF", "alias": "ALIAS", "provider": "PROVIDER",
               "api": "API", "context": "CONTEXT", "input": "INPUT", "credentials": "CREDENTIALS"}
    widths = {k: max([len(v)] + [len(r[k]) for r in rows]) for k, v in headers.items()}
    right = {"context"}

    def line(cells: dict[str, str]) -> str:
        return "  ".join(cells[k].rjust(w) if k in right else cells[k].ljust(w)
                         for k, w in widths.items()).rstrip()

    print(line(headers))
    for row in rows:
        print(line(row))
    if not any(r["default"] == "primary" for r in rows):
        print("\nno default model: Palaver will look for a local model server", file=sys.stderr)
    return EXIT_OK


# --------------------------------------------------------------------------- editing


def _edit_target(args: Any) -> Path:
    """The config file an edit command changes (an edit needs a file)."""
    from bridge.config.edit import EditError
    from bridge.config.load import find_config_path

    path = find_config_path(getattr(args, "config", None))
    if path is None:
        raise EditError("no config file to edit: create one with `palaver init`, or name "
                        "one with --config")
    return path


def run_edit(args: Any, changes: list[Any], *, done: str) -> int:
    """Apply ``changes`` through the edit engine; ``--dry-run`` prints the diff only.

    Errors: an edit that would not load prints the same lines as ``config validate``
    (EXIT_CONFIG); any other refusal one ``error:`` line.  Never echoes a secret.
    """
    from bridge.cli import EXIT_CONFIG
    from bridge.config.edit import EditError, InvalidEditError, apply_edit
    from bridge.config.load import ConfigError

    try:
        path = _edit_target(args)
        result = apply_edit(path, changes, dry_run=bool(getattr(args, "dry_run", False)))
    except InvalidEditError as exc:
        print(exc.error.render(), file=sys.stderr)
        print("nothing was written", file=sys.stderr)
        return EXIT_CONFIG
    except EditError as exc:
        return _fail(str(exc))
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        return EXIT_CONFIG
    if getattr(args, "dry_run", False):
        print(result.diff() or "no change", end="" if result.changed else "\n")
        print("(dry run: nothing was written)", file=sys.stderr)
        return EXIT_OK
    if not result.changed:
        print(f"no change: {result.path} already says that")
        return EXIT_OK
    print(f"{done} in {result.path}")
    print("a running Palaver picks it up by itself (hot reload)", file=sys.stderr)
    return EXIT_OK


def parse_value(text: str) -> Any:
    """A command-line VALUE: JSON5 (``"sonnet"``, ``{primary: "x"}``, ``true``, ``3``),
    else the text itself as a string (``sonnet``, ``local/qwen3``)."""
    import json5

    try:
        return json5.loads(text)
    except ValueError:
        if text.lstrip()[:1] in ("{", "["):
            from bridge.config.edit import EditError

            raise EditError("VALUE looks like an object or array but is not valid JSON5 "
                            "(quote strings with spaces or odd characters)") from None
        return text


def cmd_config_get(args: Any) -> int:
    """Print the value at PATH in the resolved config (secrets redacted)."""
    from bridge.config.edit import EditError, format_path, parse_path

    config, _path = load_for_cli(args)
    try:
        parts = parse_path(args.key)
    except EditError as exc:
        return _fail(str(exc))
    node: Any = redacted(config)
    for i, part in enumerate(parts):
        if isinstance(node, dict) and isinstance(part, str) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            return _fail(f"no value at {format_path(parts[:i + 1])}")
    print(node if isinstance(node, str) else json.dumps(node, indent=2, ensure_ascii=False))
    return EXIT_OK


def cmd_config_set(args: Any) -> int:
    """``config set PATH VALUE`` / ``--env VAR`` (writes ``"${VAR}"``) / VALUE ``-``
    (read from standard input: keeps a secret out of the shell history)."""
    from bridge.config.edit import Change, EditError, env_ref

    try:
        if args.env:
            if args.value is not None:
                raise EditError("give VALUE or --env VAR, not both")
            value: Any = env_ref(args.env)
        elif args.value is None:
            raise EditError("missing VALUE (or --env VAR for a secret)")
        elif args.value == "-":
            value = sys.stdin.readline().rstrip("\r\n")
        else:
            value = parse_value(args.value)
        change = Change.set(args.key, value)
    except EditError as exc:
        return _fail(str(exc))
    return run_edit(args, [change], done=f"set {args.key}")


def cmd_config_unset(args: Any) -> int:
    """``config unset PATH``: remove the key (with its comma and same-line comment)."""
    from bridge.config.edit import Change, EditError

    try:
        change = Change.unset(args.key)
    except EditError as exc:
        return _fail(str(exc))
    return run_edit(args, [change], done=f"unset {args.key}")


def cmd_config_patch(args: Any) -> int:
    """``config patch FILE``: deep-merge a JSON5 object (``null`` removes a key)."""
    import json5

    from bridge.config.edit import EditError, merge_changes

    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text("utf-8")
    except OSError as exc:
        return _fail(f"cannot read {args.file}: {exc.strerror or exc}")
    try:
        patch = json5.loads(text)
    except ValueError as exc:
        return _fail(f"{args.file}: invalid JSON5: {exc}")
    if not isinstance(patch, dict):
        return _fail(f"{args.file}: expected a JSON5 object at the top level")
    try:
        path = _edit_target(args)
        current = json5.loads(path.read_text("utf-8"))
    except EditError as exc:
        return _fail(str(exc))
    except (OSError, ValueError):
        current = {}
    changes = merge_changes(patch, current if isinstance(current, dict) else {})
    if not changes:
        print("no change: the patch is empty")
        return EXIT_OK
    return run_edit(args, changes, done=f"merged {args.file}")
