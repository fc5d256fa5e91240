"""Palaver: a bridge between chat apps (Telegram, WhatsApp) and language models."""

__version__ = "0.1.0"
