"""A DECTRIS detector's stream, simulated: a bound PUSH socket sending stream v1 (the DCU's
multipart grouping: header and configuration in one message, an image's four parts in one) or
stream v2 (CBOR, typed arrays, DECTRIS compression tag) to the published specifications.

Compressed frames are kept in a small cache keyed by their content, so a benchmark sending a
pool of frames pays for compression once per distinct frame.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

import numpy as np
import zmq

from simed_stream.detectors.dectris.compression import compress_bslz4, compress_lz4_block, compress_lz4_hdf5
from simed_stream.detectors.vendor_sim import EncodedCache, SimSeries, VendorSimulator

V1_TYPES = {"|u1": "uint8", "<u2": "uint16", "<u4": "uint32"}
V2_TAGS = {"|u1": 68, "<u2": 69, "<u4": 70}


class DectrisSimulator(VendorSimulator):
    def __init__(self, endpoint: str, version: int = 1, compression: str = "bslz4", send_timeout_s: float = 10.0,
                 **options):
        super().__init__(**options)
        if version not in (1, 2) or compression not in ("bslz4", "lz4", "none"):
            raise ValueError("version must be 1 or 2, compression bslz4, lz4 or none")
        self.version, self.compression = version, compression
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.PUSH)
        self.socket.setsockopt(zmq.SNDHWM, 64)
        self.socket.setsockopt(zmq.SNDTIMEO, int(send_timeout_s * 1000))
        self.socket.bind(endpoint)
        self._cache = EncodedCache()
        self.unique_id = ""

    def close(self) -> None:
        self.socket.close(linger=5000)
        self.context.term()

    def send(self, parts: list) -> None:
        self.socket.send_multipart(parts, copy=False)

    # -- the vendor's messages
    def begin_series(self, series: SimSeries) -> None:
        h, w = series.sig_shape
        self.unique_id = f"SIM{series.number:08d}"
        mask = None if series.pixel_mask is None else np.ascontiguousarray(series.pixel_mask, "<u4")
        if self.version == 1:  # with a mask, header detail "all": its dpixelmask-1.0 part and blob follow
            header = {"htype": "dheader-1.0", "series": series.number,
                      "header_detail": "basic" if mask is None else "all"}
            config = {"description": "simed DECTRIS simulator", "nimages": series.frames, "ntrigger": 1,
                      "x_pixels_in_detector": w, "y_pixels_in_detector": h, "bit_depth_image": 8 * series.dtype.itemsize,
                      "x_pixel_size": 55e-6, "y_pixel_size": 55e-6, "compression": self.compression}
            parts = [_json(header), _json(config)]
            if mask is not None:
                parts += [_json({"htype": "dpixelmask-1.0", "shape": [w, h], "type": "uint32"}), mask.tobytes()]
            self.send(parts)
        else:
            start = {"type": "start", "series_id": series.number, "series_unique_id": self.unique_id,
                     "channels": ["threshold_1"], "number_of_images": series.frames,
                     "image_size_x": w, "image_size_y": h, "detector_description": "simed DECTRIS simulator",
                     "pixel_size_x": 55e-6, "pixel_size_y": 55e-6, "arm_date": datetime.now(timezone.utc)}
            if mask is not None:
                import cbor2

                start["pixel_mask"] = {"threshold_1": cbor2.CBORTag(40, [[h, w], cbor2.CBORTag(70, mask.tobytes())])}
            self.send([_cbor(start)])

    def send_frame(self, series: SimSeries, index: int, pixels: np.ndarray, truncate: bool) -> None:
        blob = self._encoded(pixels)
        if truncate:
            blob = blob[: len(blob) // 2]
        if self.version == 1:
            h, w = pixels.shape
            encoding = {"bslz4": f"bs{8 * pixels.itemsize}-lz4<", "lz4": "lz4<", "none": "<"}[self.compression]
            self.send([_json({"htype": "dimage-1.0", "series": series.number, "frame": index, "hash": ""}),
                       _json({"htype": "dimage_d-1.0", "shape": [w, h], "type": V1_TYPES[pixels.dtype.str],
                              "encoding": encoding, "size": len(blob)}),
                       blob,
                       _json({"htype": "dconfig-1.0", "start_time": index * 1000, "stop_time": index * 1000 + 900,
                              "real_time": 900})])
        else:
            self.send([_cbor({"type": "image", "series_id": series.number, "series_unique_id": self.unique_id,
                              "image_id": index, "start_time": [index, 1000], "stop_time": [index + 1, 1000],
                              "real_time": [1, 1000], "data": {"threshold_1": _v2_array(pixels, blob, self.compression)}})])

    def send_garbage(self, data: bytes) -> None:
        self.send([data])

    def end_series(self, series: SimSeries, complete: bool) -> None:
        if not complete:
            return  # a detector that vanished says nothing more
        if self.version == 1:
            self.send([_json({"htype": "dseries_end-1.0", "series": series.number})])
        else:
            self.send([_cbor({"type": "end", "series_id": series.number, "series_unique_id": self.unique_id})])

    def _encoded(self, pixels: np.ndarray) -> bytes:
        def encode() -> bytes:
            if self.compression == "bslz4":
                return compress_bslz4(pixels)
            if self.compression == "lz4":
                return compress_lz4_block(pixels.tobytes()) if self.version == 1 else compress_lz4_hdf5(pixels.tobytes())
            return pixels.tobytes()

        return self._cache.get(pixels, encode)


def _json(value: dict) -> bytes:
    return json.dumps(value).encode()


def _cbor(value: dict) -> bytes:
    import cbor2

    return cbor2.dumps(cbor2.CBORTag(55799, value), datetime_as_timestamp=False, timezone=timezone.utc)


def _v2_array(pixels: np.ndarray, blob: bytes, compression: str):
    """[dims, typed array] under tag 40, the bytes under tag 56500 when compressed."""
    import cbor2

    data = blob if compression == "none" else cbor2.CBORTag(
        56500, [compression, pixels.itemsize if compression == "bslz4" else 0, blob])
    return cbor2.CBORTag(40, [list(pixels.shape), cbor2.CBORTag(V2_TAGS[pixels.dtype.str], data)])
