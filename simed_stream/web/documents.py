"""The JSON documents of the API (docs/live.md), made from what the pipeline published
(`live/view.py`): plain functions of a snapshot, no HTTP here."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from statistics import median

from simed_stream.live.view import LiveView, SeriesView
from simed_stream.live.timeline import Timeline

#: the files of a series folder the page links to (nothing else there is served)
SERIES_FILES = re.compile(r"^(particles\.star|particles_\d{4,}\.mrcs|report\.png|picks\.json|result\.json)$")
RATE_FIELDS = ("seq", "t_s", "frames_per_s", "queue_depth", "lag_s")
RESOLUTION_FIELDS = ("key", "t_s", "series_key", "resolution_A", "fourier_r")
MESSAGE_FIELDS = ("seq", "time_unix_s", "level", "logger", "text")
_DIGITS = bytes.maketrans(bytes(range(10)), b"0123456789")


def encode(document) -> bytes:
    """JSON; a non-finite number (a resolution that could not be estimated) becomes null."""
    try:
        return json.dumps(document, allow_nan=False, separators=(",", ":")).encode()
    except ValueError:
        return json.dumps(_finite(document), allow_nan=False, separators=(",", ":")).encode()


def _finite(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def series_list(view: LiveView) -> dict:
    status = view.status or {}
    return {"version": view.series_version, "series": [series_summary(s, status) for s in view.series]}


def series_summary(series: SeriesView, status: dict) -> dict:
    picks, result = series.picks, series.result
    states = [p.state for p in picks]
    reasons: dict[str, int] = {}
    for pick in picks:
        if pick.state == "flagged":
            reasons[pick.reason] = reasons.get(pick.reason, 0) + 1
    accounting = (result or {}).get("accounting") or status.get("open_series", {}).get(series.series_id)
    resolutions = [r for r in series.resolutions if math.isfinite(r)]
    return {
        "key": series.key, "series_id": series.series_id, "state": series.state,
        "status": result["status"] if result else None, "folder": series.folder.name if series.folder else None,
        "started_unix_s": round(series.started_unix_s, 3), "version": series.version,
        "nav_shape": list(series.nav_shape), "frames_expected": series.frames_expected,
        "positions": {"total": len(series.coverage), "valid": series.positions_valid,
                      "incomplete": series.positions_incomplete},
        "accounting": accounting,
        "picks": len(picks), "phased": states.count("phased"), "flagged": states.count("flagged"),
        "pending": states.count("pending"), "flag_reasons": reasons,
        "resolution_A": {"median": median(resolutions), "best": min(resolutions)} if resolutions else None,
        "overview": None if series.overview is None else {
            "url": f"/api/series/{series.key}/overview.png", "shape": list(series.overview.shape),
            "pixel_A": series.overview_pixel_A, "pick_diameter_px": series.pick_diameter_px},
        "files": series_files(series),
    }


def series_detail(series: SeriesView, status: dict) -> dict:
    """The summary, the coverage map (one digit per scan position, row by row: 0 not yet,
    1 valid, 2 incomplete) and every pick with its state."""
    coverage = bytes(series.coverage)  # one copy: the event thread writes it in place
    return dict(series_summary(series, status), coverage=coverage.translate(_DIGITS).decode("ascii"),
                picks_list=[{"index": p.index, "y": round(p.yx_px[0], 2), "x": round(p.yx_px[1], 2), "state": p.state,
                             "reason": p.reason, "key": p.key} for p in series.picks])


def series_files(series: SeriesView) -> list[dict]:
    folder = series.folder
    if folder is None:
        return []
    try:
        names = sorted(entry.name for entry in Path(folder).iterdir() if SERIES_FILES.match(entry.name))
    except OSError:  # not made yet, or gone
        return []
    return [{"name": name, "url": f"/series/{series.key}/files/{name}"} for name in names]


def particles(view: LiveView) -> dict:
    """The gallery, newest first."""
    return {"version": view.gallery_version, "particles": [{
        "key": p.key, "series_key": p.series_key, "series_id": p.series_id, "index": p.index,
        "scan_yx": list(p.scan_yx), "coverage": p.coverage, "fourier_r": p.fourier_r, "r_free": p.r_free,
        "resolution_A": p.resolution_A, "uncertainty": p.uncertainty, "t_s": p.t_s,
        "images": {"lowres": f"/api/particles/{p.key}/lowres.png", "phased": f"/api/particles/{p.key}/phased.png"},
    } for p in reversed(view.gallery)]}


def timeline(records: Timeline, fields: tuple[str, ...], since: int, limit: int) -> dict:
    """Records numbered above `since` (at most `limit`), oldest first; `last` is the newest number."""
    items = records.since(since, limit)
    return {"last": items[-1][0] if items else min(max(since, 0), records.last),
            "items": [dict(zip(fields, record)) for record in items]}
