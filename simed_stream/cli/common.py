"""Small helpers the commands share: argument types, the status line (the loopback rule is `links.py`'s)."""

from __future__ import annotations

import argparse
import sys


def shape(text: str) -> tuple[int, int]:
    try:
        y, x = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 32x32, got {text!r}") from None
    if y < 1 or x < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return y, x


def rate(text: str) -> str | float:
    if text in ("recorded", "max"):
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'recorded', 'max' or frames per second, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("the rate must be positive")
    return value


def print_status(status: dict) -> None:
    from simed_stream.live.status import status_line

    end = "\r" if sys.stderr.isatty() else "\n"
    print(status_line(status), end=end, file=sys.stderr, flush=True)
