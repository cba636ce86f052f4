"""`simed reprocess`: recorded captures through the particle chain, here or on Dask."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from pydantic import Field

from simed_stream.chain_settings import ChainSettings
from simed_stream.config import cli


class ReprocessCommand(ChainSettings):
    captures: list[Path] = Field(min_length=1, description="captures to phase", json_schema_extra=cli(positional=True))
    out: Path = Field(description="output folder: DIR/<capture>/ per capture")
    scheduler: Optional[str] = Field(None, description="Dask: 'local' (a local cluster; the default for several "
                                     "captures), the address of a running scheduler (tcp://host:8786), or 'none' "
                                     "(one after the other, here)")
    workers: int = Field(2, ge=1, description="processes of the local Dask cluster")
    print_json: bool = Field(False, description="print the results as JSON", json_schema_extra=cli("--json"))


def reprocess(command: ReprocessCommand) -> int:
    """Offline, the same stages as live: pick particles in each capture's overview, match them to
    scan positions, phase them, and write DIR/<series>/ with particles_NNNN.mrcs, particles.star,
    picks.json, result.json and report.png. Captures are only read."""
    from simed_stream.reprocess import reprocess_captures

    scheduler = command.scheduler or ("local" if len(command.captures) > 1 else "none")
    results = reprocess_captures(command.captures, command.out, command, None if scheduler == "none" else scheduler,
                                 command.workers)
    if command.print_json:
        print(json.dumps([r.as_dict() for r in results]))
    for r in results:
        print(f"reprocess: {r.series_id}: {r.status}; {r.picks} picks, {r.phased} phased"
              + "".join(f", {n} flagged ({why})" for why, n in r.flagged.items()) + f" -> {r.out_dir}")
    return 0 if all(r.status == "phased" for r in results) else 1
