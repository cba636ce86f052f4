"""Shared by the fuzz tests (test_fuzz_*.py): hypothesis profiles, byte and JSON mutations, and a
guard that turns a hang into a failure.

Profiles: "ci" (the default) is derandomized, so CI runs the same examples every time, and sized
so that all fuzz tests together take about a minute on a busy 2-core machine; "long"
(`SIMED_FUZZ_PROFILE=long`) runs 20× the examples with fresh random seeds. Neither writes an
example database into the repository.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from simed_stream.detectors.base import Decoded
from simed_stream.protocol import Message, ProtocolError

PROFILE = os.environ.get("SIMED_FUZZ_PROFILE", "ci")
SCALE = {"ci": 1, "long": 20}.get(PROFILE)
if SCALE is None:
    raise RuntimeError(f"SIMED_FUZZ_PROFILE={PROFILE!r} is not 'ci' or 'long'")
# A deadline far above a decode's milliseconds: a busy machine must not make CI flaky, while a
# decoder that loops or allocates gigabytes still fails. Real hangs are caught by `no_hang`.
_COMMON = dict(database=None, deadline=5000, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                      HealthCheck.function_scoped_fixture])
settings.register_profile("ci", derandomize=True, **_COMMON)
settings.register_profile("long", derandomize=False, **_COMMON)
settings.load_profile(PROFILE)


def examples(ci_count: int) -> settings:
    """A test's example count: `ci_count` in the ci profile, 20× that in the long one."""
    return settings(max_examples=ci_count * SCALE)


class Hang(Exception):
    """A decoder or parser ran past its time: a loop that does not end."""


@contextlib.contextmanager
def no_hang(seconds: float = 10.0):
    """Fail with `Hang` if the block runs longer than `seconds` (a Python-level loop; the timer
    interrupts between bytecodes). Main thread only, where pytest runs tests."""
    def expired(signum, frame):
        raise Hang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------- values and mutations

#: integers where decoders break: signs, word sizes, beyond int64 and float precision
ABSURD_INTS = st.sampled_from([0, -1, 1, 2, 255, 256, 65535, 65536, 65537, 2**31 - 1, 2**31, 2**32, 2**32 + 1,
                               2**53 + 1, 2**62, 2**63 - 1, 2**63, 2**64, 2**64 + 1, -2**63, -2**64, 10**30,
                               10**300])
JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), ABSURD_INTS,
                         st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)


@st.composite
def mutated_bytes(draw, data: bytes, max_edits: int = 4) -> bytes:
    """`data` with a few edits: bit flips, bytes replaced, a cut at any point, bytes inserted,
    a range deleted or repeated, a run of digits made absurd."""
    data = bytearray(data)
    for _ in range(draw(st.integers(1, max_edits))):
        kind = draw(st.sampled_from(["flip", "replace", "truncate", "insert", "delete", "repeat", "digits"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "replace" and data:
            data[at] = draw(st.sampled_from([0, 0xFF, 0x7F, 0x80, ord("{"), ord("}"), ord(","), ord("-"),
                                             ord("9"), ord("\n"), draw(st.integers(0, 255))]))
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 64))]
        elif kind == "repeat":
            data[at:at] = data[at:at + draw(st.integers(1, 64))]
        elif kind == "digits":
            start = next((i for i in range(at, len(data)) if chr(data[i]).isdigit()), None)
            if start is not None:
                end = start
                while end < len(data) and chr(data[end]).isdigit():
                    end += 1
                data[start:end] = draw(st.sampled_from([b"0", b"9" * 10, b"9" * 30, b"4294967296",
                                                        b"18446744073709551616", b"-1"]))
    return bytes(data)


def _paths(value, prefix=()):
    """Every (key path) into nested dicts and lists, the root's own keys first."""
    if isinstance(value, dict):
        for key, inner in value.items():
            yield prefix + (key,)
            yield from _paths(inner, prefix + (key,))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            yield prefix + (index,)
            yield from _paths(inner, prefix + (index,))


@st.composite
def mutated_json(draw, value: dict, max_edits: int = 3) -> dict:
    """A copy of a JSON object with a few fields replaced by any JSON value (an absurd size, a
    wrong type, a negative number), deleted, or added."""
    value = json.loads(json.dumps(value))
    for _ in range(draw(st.integers(1, max_edits))):
        paths = list(_paths(value))
        kind = draw(st.sampled_from(["replace", "replace", "absurd", "delete", "add"]))
        if kind == "add" or not paths:
            value[draw(st.text(max_size=8))] = draw(JSON_VALUES)
            continue
        path = draw(st.sampled_from(paths))
        parent = value
        for key in path[:-1]:
            parent = parent[key]
        if kind == "delete":
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(ABSURD_INTS if kind == "absurd" else JSON_VALUES)
    return value


def check_events(events) -> None:
    """An adapter's events: each a valid simed-stream/1 message (with its header bytes) or a
    rejection with a one-line reason."""
    for event in events:
        assert isinstance(event, Decoded)
        if event.error is not None:
            assert isinstance(event.error, ProtocolError) and event.message is None
            assert event.error.reason and "\n" not in event.error.reason, event.error.reason
        else:
            assert isinstance(event.message, Message.__args__) and event.header_bytes
