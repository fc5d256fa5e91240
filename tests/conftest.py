"""Shared fixtures.  Nothing in the test suite reaches the internet."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    """Each test gets its own HOME and no ambient credentials or config."""
    for var in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "OPENROUTER_API_KEY",
                "TELEGRAM_BOT_TOKEN", "PALAVER_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    yield
