"""The bot token: where it comes from (its shape, BOT_TOKEN_RE, is the core's: bridge.secrets)."""

from __future__ import annotations

import os
from pathlib import Path

from bridge.config.schema import TelegramConfig
from bridge.secrets import BOT_TOKEN_RE

__all__ = ["FIX_TOKEN", "TokenError", "resolve_token"]

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
    if not BOT_TOKEN_RE.match(token):  # the shape's home is the core's
        raise TokenError(f"the token in {source} does not look like a bot token from BotFather")
    return token
