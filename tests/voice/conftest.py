"""Fixtures for voice notes: fake audio servers, a session, resolved audio models."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from bridge.config.resolve import ResolvedModel
from bridge.config.schema import Config
from tests.fakes.audio_server import FakeAudioServer


@pytest.fixture
async def audio_server():
    async with FakeAudioServer() as s:
        yield s


@pytest.fixture
async def audio_server2():
    async with FakeAudioServer() as s:
        yield s


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


def audio_config(providers: dict[str, str], *, api: str = "openai-completions",
                 models: tuple[str, ...] = ("whisper-1",), **provider_extra: Any) -> Config:
    """A config whose providers (id -> baseUrl) each serve ``models``."""
    return Config.model_validate({"models": {"providers": {
        pid: {"baseUrl": url, "api": api, "models": [{"id": m} for m in models],
              **provider_extra}
        for pid, url in providers.items()}}})


def audio_model(base_url: str, model: str = "whisper-1", *, provider: str = "local",
                api: str = "openai-completions", **extra: Any) -> ResolvedModel:
    """One resolved audio model on ``base_url`` (``extra``: provider keys)."""
    return audio_config({provider: base_url}, api=api, models=(model,),
                        **extra).model(f"{provider}/{model}")
