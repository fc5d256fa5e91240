"""Fake servers on 127.0.0.1 that speak the exact wire formats (see ../shared/WIRE.md)."""
