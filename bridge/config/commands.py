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
