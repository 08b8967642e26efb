"""Inference runtimes behind one small protocol; each imported only when a manifest selects it."""

from .base import BACKENDS, Backend, Device, Session, get_backend, parse_device

__all__ = ["BACKENDS", "Backend", "Device", "Session", "get_backend", "parse_device"]
