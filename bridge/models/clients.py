"""Pick the client for a model's wire API."""

from __future__ import annotations

import aiohttp

from bridge.config.schema import ResolvedModel
from bridge.models.anthropic import AnthropicClient
from bridge.models.base import ModelClient
from bridge.models.completions import CompletionsClient
from bridge.models.responses import ResponsesClient

_CLIENTS = {
    "openai-responses": ResponsesClient,
    "openai-completions": CompletionsClient,
    "anthropic-messages": AnthropicClient,
}


def make_client(model: ResolvedModel, session: aiohttp.ClientSession) -> ModelClient:
    """The client speaking ``model.api``, sharing ``session`` (owned by the caller)."""
    try:
        cls = _CLIENTS[model.api]
    except KeyError:
        raise ValueError(f"unknown model api {model.api!r}") from None
    return cls(model, session)
