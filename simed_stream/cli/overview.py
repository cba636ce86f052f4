"""`simed overview FILE`: the microscope's overview image to a running receiver (`simed run` or
`simed receive` with `overview.endpoint`), for the series named or, without --series, the one
the receiver's rule picks (docs/detectors.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, field_validator

from simed_stream.config import Settings, cli
from simed_stream.detectors.settings import DEFAULT_OVERVIEW_ENDPOINT, affine_from_text
from simed_stream.errors import SimedError
from simed_stream.links import LinkSecurity


class OverviewCommand(Settings):
    file: Path = Field(description="the overview image (.mrc, .tif)", json_schema_extra=cli(positional=True))
    series: Optional[str] = Field(None, description="the series it belongs to (default: the receiver's rule)")
    endpoint: str = Field(DEFAULT_OVERVIEW_ENDPOINT, min_length=1, description="the receiver's overview endpoint")
    pixel_size_A: Optional[float] = Field(None, gt=0, allow_inf_nan=False,
                                          description="pixel size (Å); default: the file's header")
    affine: Optional[tuple[float, float, float, float, float, float]] = Field(
        None, description="scan (y, x, 1) → overview (row, col), 'a,b,c,d,e,f'; default: the file's header")
    acquired: Literal["before", "after"] = Field("after", description="taken before or after the scan")
    timeout_s: float = Field(10.0, gt=0, allow_inf_nan=False, description="wait this long for the receiver")
    security: LinkSecurity = LinkSecurity()  # to a receiver that has keys: ours, and its public key

    @field_validator("affine", mode="before")
    @classmethod
    def _affine_from_text(cls, value):
        return affine_from_text(value)


def overview(command: OverviewCommand) -> int:
    """Read an MRC or TIFF overview and send it to the receiver's overview endpoint; its pixel
    size and scan → overview affine come from the options or the file's header."""
    import numpy as np
    import zmq

    from simed_stream import links
    from simed_stream.ingest.overviews import ANY_SERIES
    from simed_stream.image_files import read_overview
    from simed_stream.protocol import encode_overview

    image = read_overview(command.file)
    pixel = command.pixel_size_A or image.pixel_size_A
    affine = np.asarray(command.affine, float).reshape(2, 3) if command.affine is not None else image.affine
    if pixel is None or affine is None:
        raise SimedError(f"{command.file.name} has no {'pixel size' if pixel is None else 'scan → overview affine'}"
                         " in its header: give --pixel-size-A and --affine")
    context = zmq.Context()
    socket = context.socket(zmq.PUSH)
    socket.setsockopt(zmq.SNDTIMEO, int(command.timeout_s * 1000))
    socket.setsockopt(zmq.LINGER, int(command.timeout_s * 1000))
    try:
        links.connect(socket, command.endpoint, command.security)
        socket.send_multipart(encode_overview(command.series or ANY_SERIES, 0, 0, image.image, pixel, affine,
                                              command.acquired), copy=False)
    except zmq.ZMQError as error:
        raise SimedError(f"no receiver took the overview at {command.endpoint} within {command.timeout_s:g} s "
                         f"({error})") from None
    finally:
        socket.close()
        context.term()
    print(f"overview: {command.file.name} ({image.image.shape[0]}x{image.image.shape[1]} px, {pixel:g} Å/px) sent to "
          f"{command.endpoint} for {command.series or 'the series the receiver picks'}")
    return 0
