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

    p = sub.add_parser("config", help="validate or show the config")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    q = csub.add_parser("validate", parents=[common], help="exit 0 if the config is valid")
    q.set_defaults(path=("config", "validate"))
    q = csub.add_parser("show", parents=[common], help="the resolved config, secrets redacted")
    q.set_defaults(path=("config", "show"))

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
