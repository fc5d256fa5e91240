"""Model clients (one per wire API), reasoning stripping and routing.

``make_client``, ``ModelRouter`` and ``strip_reasoning`` are importable from here; they
load lazily so that importing ``bridge.models.base`` stays cheap.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "make_client": "bridge.models.clients",
    "ModelRouter": "bridge.models.router",
    "strip_reasoning": "bridge.models.reasoning",
    "ReasoningFilter": "bridge.models.reasoning",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'bridge.models' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
