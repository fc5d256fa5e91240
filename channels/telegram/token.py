"""The bot token: where it comes from and what it must look like."""

from __future__ import annotations

import os
import re
from pathlib import Path

from bridge.config.schema import TelegramConfig

__all__ = ["FIX_TOKEN", "TOKEN_RE", "TokenError", "resolve_token"]

# The shape of a BotFather token.  bridge/config/schema.py checks the same shape; the
# two should share one home in the core (channels may import bridge, not the reverse).
TOKEN_RE = re.compile(r"^\d+:[A-Za-z0-9_-]{30,}$")
FIX_TOKEN = "Check channels.telegram.botToken / tokenFile / $TELEGRAM_BOT_TOKEN"


class TokenError(Exception):
    """No usable bot token (missing, unreadable or malformed)."""


def resolve_token(config: TelegramConfig) -> str:
    """The bot token from botToken, tokenFile or $TELEGRAM_BOT_TOKEN (in that order).

    Raises :class:`TokenError` (never containing the token) when there is none or it
    does not look like a BotFather token.
    """
    if config.botToken is not None:
        token, source = config.botToken.get_secret_value().strip(), "botToken"
    elif config.tokenFile:
        path = Path(config.tokenFile).expanduser()
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise TokenError(f"cannot read tokenFile {path}: {exc.strerror}") from None
        source = f"tokenFile {path}"
    elif os.environ.get("TELEGRAM_BOT_TOKEN"):
        token, source = os.environ["TELEGRAM_BOT_TOKEN"].strip(), "$TELEGRAM_BOT_TOKEN"
    else:
        raise TokenError(
            "no bot token: set channels.telegram.botToken, tokenFile or $TELEGRAM_BOT_TOKEN"
        )
    if not TOKEN_RE.match(token):
        raise TokenError(f"the token in {source} does not look like a bot token from BotFather")
    return token
