"""Configuration: a typed, frozen tree parsed once from JSON5."""

from bridge.config.schema import Config, ResolvedModel

__all__ = ["Config", "ResolvedModel"]
