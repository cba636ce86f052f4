"""Detectors: one package per wire format, each with the adapter that turns its stream into the
receiver's events (`base.py`) and the simulator that speaks it (`simed/`, `dectris/`, `merlin/`,
`serval/`). Which one runs is one setting, `source` (`settings.py`); docs/detectors.md says how
to point each real detector at simed."""

from __future__ import annotations

from simed_stream import links
from simed_stream.detectors.base import Adapter, Decoded
from simed_stream.detectors.settings import SOURCES, SourceSettings

__all__ = ["Adapter", "Decoded", "SOURCES", "SourceSettings", "make_adapter"]


def make_adapter(settings: SourceSettings, rcvhwm: int, max_message_bytes: int) -> Adapter:
    """The adapter of `settings.source`, not yet open. Imported here, on use: each brings its own
    libraries (CBOR and DECTRIS compression only for DECTRIS)."""
    if settings.source == "simed":
        from simed_stream.detectors.simed.adapter import SimedAdapter

        return SimedAdapter(settings.data_endpoint, rcvhwm, max_message_bytes, settings.security)
    if settings.source == "dectris":
        from simed_stream.detectors.dectris.adapter import DectrisAdapter

        return DectrisAdapter(settings, rcvhwm, max_message_bytes)
    if settings.source in ("merlin", "serval"):  # their own plain TCP: no keys, so the rule alone
        verb = "listen on" if "listen@" in settings.data_endpoint else "connect to"
        links.allow_plain(settings.data_endpoint, settings.security, verb)
    if settings.source == "merlin":
        from simed_stream.detectors.merlin.adapter import MerlinAdapter

        return MerlinAdapter(settings, max_message_bytes)
    if settings.source == "serval":
        from simed_stream.detectors.serval.adapter import ServalAdapter

        return ServalAdapter(settings, max_message_bytes)
    raise ValueError(f"unknown source {settings.source!r}; known: {', '.join(SOURCES)}")
