"""A capture as a fake detector's source: its recorded headers verbatim, its frames in each
message's own order, its timing — so a replay without faults reproduces the original stream bit
for bit (`simed detector --capture`, `simed replay`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from simed_stream.capture import CaptureReader
from simed_stream.detectors.series_source import SeriesSource


def capture_series(path: str | Path) -> SeriesSource:
    """Replay source for a capture: its recorded headers verbatim, its frames, its timing."""
    reader = CaptureReader(path)
    f = reader.file
    headers = reader.message_headers()
    times = reader.message_times_ns()
    start_header = json.loads(headers[0])
    # the ids each frames message carried, in its own order (duplicates of earlier frames included)
    groups = {index: ids.astype(np.int64) for index, ids in enumerate(f["messages/frame_ids"][:]) if len(ids)}
    overviews = {}
    for dataset in f.get("overviews", {}).values():
        header = json.loads(dataset.attrs["header"])
        overviews[header["msg_seq"]] = {"overview_id": header["overview_id"], "image": dataset[:],
                                        "pixel_size_A": header["pixel_size_A"], "acquired": header["acquired"],
                                        "affine": header["affine_scan_to_overview"]}
    fields = {k: v for k, v in start_header.items() if k not in ("htype", "protocol", "series_id", "msg_seq", "pixel_mask")}
    mask = f["pixel_mask"][:] if "pixel_mask" in f else None
    dwell = start_header["scan"].get("dwell_s", 0.0) / max(1, start_header["scan"]["frames_per_position"])

    def messages():
        for index, recorded in enumerate(headers):
            header = json.loads(recorded)
            htype = header["htype"]
            if htype == "frames" and index in groups:
                ids = groups[index]  # in the message's own order
                sorted_ids = np.sort(ids)
                rank = np.searchsorted(sorted_ids, ids)
                yield htype, recorded, (ids.astype(np.uint64), f["scan_yx"][sorted_ids][rank],
                                        f["timestamp_ns"][sorted_ids][rank], f["frames"][sorted_ids][rank])
            elif htype == "overview_image" and header["msg_seq"] in overviews:
                yield htype, recorded, overviews[header["msg_seq"]]
            elif htype == "series_start":
                yield htype, recorded, fields
            elif htype == "series_end":
                yield htype, recorded, header

    return SeriesSource(start_header["series_id"], fields, mask, messages(), dwell, times)
