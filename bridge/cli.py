"""The ``palaver`` command.

Each subcommand is a ``cmd_*(args) -> int`` function in the module that owns the idea;
this file only parses arguments and dispatches (modules are imported lazily so that
``palaver --version`` stays instant and never loads a platform SDK).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from bridge import __version__

# Exit statuses, the same for every subcommand:
#
#   0    EXIT_OK           done; for checks (config validate, doctor): all good
#   1    EXIT_FAILURE      it ran and failed: a turn failed (chat), no working model
#                          (doctor), linking failed (whatsapp login), init would overwrite
#   1    EXIT_CONFIG       the config file is missing or invalid (one message, no
#                          traceback; `config validate` has always exited 1 for it)
#   2    EXIT_UNUSABLE     it could not run as asked: bad arguments or no subcommand
#                          (argparse's own status), the store cannot be used, another
#                          process holds the data directory, no channel is enabled, no
#                          model was found, an unknown --model
#   130  EXIT_INTERRUPTED  Ctrl-C
#
# A handler raises ConfigError or StoreError rather than choosing a status for them;
# main() reports both.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 1
EXIT_UNUSABLE = 2
EXIT_INTERRUPTED = 130

# subcommand path -> "module:function"
_HANDLERS = {
    ("init",): "bridge.config.commands:cmd_init",
    ("config", "validate"): "bridge.config.commands:cmd_config_validate",
    ("config", "show"): "bridge.config.commands:cmd_config_show",
    ("config", "get"): "bridge.config.commands:cmd_config_get",
    ("config", "set"): "bridge.config.commands:cmd_config_set",
    ("config", "unset"): "bridge.config.commands:cmd_config_unset",
    ("config", "patch"): "bridge.config.commands:cmd_config_patch",
    ("config", "import-openclaw"): "bridge.config.openclaw:cmd_import_openclaw",
    ("chats", "list"): "bridge.chats:cmd_chats",
    ("chats", "model"): "bridge.chats:cmd_chats_model",
    ("chats", "reset"): "bridge.chats:cmd_chats_reset",
    ("models", "list"): "bridge.config.commands:cmd_models_list",
    ("doctor",): "bridge.models.doctor:cmd_doctor",
    ("run",): "bridge.run:cmd_run",
    ("chat",): "bridge.run:cmd_chat",
    ("pairing", "list"): "bridge.access:cmd_pairing_list",
    ("pairing", "approve"): "bridge.access:cmd_pairing_approve",
    ("whatsapp", "login"): "channels.whatsapp.login:cmd_login",
    ("whatsapp", "logout"): "channels.whatsapp.login:cmd_logout",
    ("whatsapp", "status"): "channels.whatsapp.login:cmd_status",
    ("usage",): "bridge.usage.report:cmd_usage",
    ("console",): "bridge.console_web.cli:cmd_console",
    ("store", "migrate"): "bridge.store.copy:cmd_store_migrate",
}


def _common_options(default: object) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", "-c", metavar="PATH", help="config file (JSON5)",
                        default=default)
    common.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                        default=default)
    common.add_argument("--log-format", choices=["text", "json"], default=default)
    return common


def build_parser() -> argparse.ArgumentParser:
    # Subcommands SUPPRESS their defaults so `palaver -c X run` keeps X (argparse copies a
    # subparser's defaults over the main parser's values otherwise).
    common = _common_options(argparse.SUPPRESS)

    parser = argparse.ArgumentParser(
        prog="palaver",
        description="Bridge WhatsApp and Telegram chats to local and hosted language models.",
        parents=[_common_options(None)],
    )
    parser.add_argument("--version", action="version", version=f"palaver {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", parents=[common], help="run every enabled channel")
    p.set_defaults(path=("run",))

    p = sub.add_parser("chat", parents=[common], help="chat from the terminal (same pipeline)")
    p.add_argument("--session", default="operator", help="console session name")
    p.add_argument("--model", help="model ref or alias for this session")
    p.set_defaults(path=("chat",))

    p = sub.add_parser("init", parents=[common], help="write a commented starter config")
    p.add_argument("path_arg", nargs="?", metavar="PATH", help="where (default ./palaver.json5)")
    p.set_defaults(path=("init",))

    p = sub.add_parser("doctor", parents=[common], help="probe every provider in use")
    p.add_argument("--reply", action="store_true",
                   help="also send each model Palaver routes to a one-line prompt and "
                        "report its answer, time to first token and total time")
    p.set_defaults(path=("doctor",))

    p = sub.add_parser("config", help="validate, show or edit the config")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    q = csub.add_parser("validate", parents=[common], help="exit 0 if the config is valid")
    q.set_defaults(path=("config", "validate"))
    q = csub.add_parser("show", parents=[common], help="the resolved config, secrets redacted")
    q.set_defaults(path=("config", "show"))
    dry = argparse.ArgumentParser(add_help=False)
    dry.add_argument("--dry-run", action="store_true",
                     help="print a unified diff of the file, write nothing")
    q = csub.add_parser("get", parents=[common], help="the value at PATH, secrets redacted")
    q.add_argument("key", metavar="PATH", help='dotted path, e.g. channels.telegram.model')
    q.set_defaults(path=("config", "get"))
    q = csub.add_parser("set", parents=[common, dry], help="set PATH to a JSON5 VALUE")
    q.add_argument("key", metavar="PATH",
                   help='dotted path; quote odd keys: models.providers["my.lab"].apiKey')
    q.add_argument("value", metavar="VALUE", nargs="?",
                   help='JSON5 (sonnet, "sonnet", {primary: "local/qwen3"}); - reads stdin')
    q.add_argument("--env", metavar="VAR", help='write "${VAR}" (for secrets)')
    q.set_defaults(path=("config", "set"))
    q = csub.add_parser("unset", parents=[common, dry], help="remove PATH")
    q.add_argument("key", metavar="PATH")
    q.set_defaults(path=("config", "unset"))
    q = csub.add_parser("patch", parents=[common, dry],
                        help="deep-merge a JSON5 object from FILE (null removes a key)")
    q.add_argument("file", metavar="FILE", help="JSON5 file, - for stdin")
    q.set_defaults(path=("config", "patch"))
    q = csub.add_parser("import-openclaw", parents=[common],
                        help="write a Palaver config from an OpenClaw openclaw.json")
    q.add_argument("file", metavar="FILE", help="the openclaw.json to read")
    q.add_argument("--output", "-o", metavar="PATH",
                   help="where to write (default: --config, else ./palaver.json5)")
    q.add_argument("--force", action="store_true", help="overwrite an existing file")
    q.set_defaults(path=("config", "import-openclaw"))

    p = sub.add_parser("chats", parents=[common],
                       help="every chat Palaver has seen and the model that answers it")
    p.add_argument("--channel", help="only this channel")
    p.add_argument("--kind", choices=["direct", "group", "topic"], help="only this kind")
    p.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    p.set_defaults(path=("chats", "list"))
    chsub = p.add_subparsers(dest="chats_command", metavar="ACTION")
    q = chsub.add_parser("model", parents=[common, dry],
                         help="pin a chat's model in the config (or --channel, --default)")
    q.add_argument("chat", metavar="CHAT",
                   help="as `palaver chats` prints it: telegram:-100123, whatsapp:+1555..., "
                        "telegram:-100123:topic:7")
    q.add_argument("ref", metavar="REF", nargs="?", help="model ref or alias")
    scope = q.add_mutually_exclusive_group()
    scope.add_argument("--channel", dest="scope", action="store_const", const="channel",
                       help="pin the whole channel of CHAT instead (channels.<name>.model)")
    scope.add_argument("--default", dest="scope", action="store_const", const="default",
                       help="set the default instead (agents.defaults.model)")
    q.add_argument("--clear", action="store_true", help="remove the pin")
    q.set_defaults(path=("chats", "model"))
    q = chsub.add_parser("reset", parents=[common],
                         help="clear the chat's own /model choice")
    q.add_argument("chat", metavar="CHAT")
    q.set_defaults(path=("chats", "reset"))

    p = sub.add_parser("models", help="list configured models")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    q = msub.add_parser("list", parents=[common], help="table of every model")
    q.set_defaults(path=("models", "list"))

    p = sub.add_parser("pairing", help="admit senders who asked to pair")
    psub = p.add_subparsers(dest="pairing_command", metavar="ACTION", required=True)
    q = psub.add_parser("list", parents=[common], help="pending pairing requests")
    q.set_defaults(path=("pairing", "list"))
    q = psub.add_parser("approve", parents=[common], help="approve a pairing code")
    q.add_argument("channel")
    q.add_argument("code")
    q.set_defaults(path=("pairing", "approve"))

    p = sub.add_parser("whatsapp", help="link or unlink the WhatsApp account")
    wsub = p.add_subparsers(dest="whatsapp_command", metavar="ACTION", required=True)
    q = wsub.add_parser("login", parents=[common], help="link this bridge as a device")
    q.add_argument("--phone", metavar="+E164", help="pair with a code instead of a QR")
    q.set_defaults(path=("whatsapp", "login"))
    q = wsub.add_parser("logout", parents=[common], help="unlink the device")
    q.set_defaults(path=("whatsapp", "logout"))
    q = wsub.add_parser("status", parents=[common],
                        help="linked number and name, and the running channel's state")
    q.set_defaults(path=("whatsapp", "status"))

    p = sub.add_parser("usage", parents=[common], help="tokens and cost, grouped")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--since", metavar="AGE", help="this far back: 7d, 12h, 30m (default 30d)")
    when.add_argument("--month", metavar="YYYY-MM", help="one calendar month (UTC)")
    p.add_argument("--by", default="chat",
                   choices=["chat", "sender", "model", "provider", "channel", "day"])
    p.add_argument("--format", dest="output_format", default="table",
                   choices=["table", "csv", "json"])
    p.set_defaults(path=("usage",))

    p = sub.add_parser("store", help="the conversation store")
    ssub = p.add_subparsers(dest="store_command", metavar="ACTION", required=True)
    q = ssub.add_parser("migrate", parents=[common],
                        help="copy this data dir's SQLite store into an empty PostgreSQL")
    q.add_argument("--to", required=True, metavar="URL",
                   help="postgresql://user:password@host:port/dbname (must be empty)")
    q.set_defaults(path=("store", "migrate"))

    p = sub.add_parser("console", parents=[common],
                       help="print a one-time login link to the web console")
    p.add_argument("--no-browser", action="store_true", help="only print the link")
    p.set_defaults(path=("console",))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, run the subcommand, return its exit status (see the table above)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    path = getattr(args, "path", None)
    if path is None:
        parser.print_help()
        return EXIT_UNUSABLE
    module_name, func_name = _HANDLERS[path].split(":")
    handler = getattr(importlib.import_module(module_name), func_name)
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:
        # A config mistake or an unusable store is a user error: its message, never a
        # traceback.
        from bridge.config.load import ConfigError
        from bridge.store.db import StoreError

        if isinstance(exc, ConfigError):
            print(exc, file=sys.stderr)
            return EXIT_CONFIG
        if isinstance(exc, StoreError):
            print(f"palaver: {exc}", file=sys.stderr)
            return EXIT_UNUSABLE
        raise


if __name__ == "__main__":
    sys.exit(main())
