"""`simed reprocess`: recorded captures through the particle chain, one after the other here or
as independent tasks on a Dask cluster. A capture is only read, never changed."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from simed_stream.capture import CaptureReader
from simed_stream.chain import NO_OVERVIEW, ChainSettings, SeriesChain, SeriesResult
from simed_stream.errors import SimedError
from simed_stream.files import check_writable
from simed_stream.particles import ScanCalibration
from simed_stream.phasing.inference import Phaser

log = logging.getLogger(__name__)


def reprocess_capture(path: Path, out_dir: Path, phaser: Phaser, settings: ChainSettings) -> SeriesResult:
    """One capture through the chain: every position a particle needs, then the batches."""
    try:
        reader = CaptureReader(path)
    except (ValueError, OSError) as error:
        raise SimedError(f"cannot reprocess {path}: {error} (a truncated or foreign file?)") from None
    with reader:
        series_id = str(reader.file.attrs.get("series_id", path.stem))
        notes = []
        if reader.file.attrs.get("state") != "closed":
            notes.append("the capture was not closed by its receiver: using what it flushed")
        try:
            overview = reader.first_overview()
            if overview is None:
                return SeriesResult(series_id, out_dir, NO_OVERVIEW, accounting=reader.accounting, notes=notes + [
                    f"{int((reader.frame_status == 1).sum())} captured frames kept in {path}"])
            image, header = overview
            calibration = ScanCalibration.from_headers(reader.series_start, header)
            chain = SeriesChain(phaser, settings, series_id, out_dir, image.astype(np.float64), calibration,
                                reader.pixel_mask, reader.truth())
            ready = []
            for position in chain.positions_needed():
                ready.extend(chain.offer(reader.position_sum(position)))
            for first in range(0, len(ready), settings.batch_size):
                chain.phase(ready[first : first + settings.batch_size])
            return chain.finish(notes, reader.accounting)
        except (OSError, KeyError) as error:
            raise SimedError(f"{path} is damaged or truncated: {error}") from None


def reprocess_one(capture: Path, out_root: Path, settings: ChainSettings) -> SeriesResult:
    """One capture into `out_root/<capture stem>/`, its result.json written once; a bad capture
    gives a failed result, not an exception."""
    import torch

    out_dir = out_root / Path(capture).stem
    threads = torch.get_num_threads()
    # one thread: the same arithmetic (and so the same stack, bit for bit) on a laptop, in a
    # Dask worker or here (torch sums in another order on more threads)
    torch.set_num_threads(1)
    try:
        if not Path(capture).is_file():
            raise SimedError(f"capture {capture} does not exist")
        result = reprocess_capture(Path(capture), out_dir, settings.phaser(), settings)
    except Exception as error:  # one capture's problem must not stop the others (or a Dask gather)
        if not isinstance(error, SimedError):
            log.exception("%s: unexpected failure", capture)
        else:
            log.error("%s: %s", capture, error)
        result = SeriesResult(Path(capture).stem, out_dir, f"failed: {error}")
    finally:
        torch.set_num_threads(threads)
    result.write()
    return result


def reprocess_captures(captures: list[Path], out_root: Path, settings: ChainSettings, scheduler: str | None = None,
                       workers: int = 2) -> list[SeriesResult]:
    """Every capture into `out_root/<capture stem>/`, in order.

    scheduler: None runs them here one after the other; "local" starts a local Dask cluster of
    `workers` single-threaded processes; any other value is the address of a running Dask
    scheduler (`tcp://host:8786`), which is how a user outgrows one machine. The results are
    the same whichever runs them: each capture is one independent, deterministic task."""
    check_writable(out_root)
    settings.phaser()  # a bad model fails once, before any capture is touched
    stems = [Path(c).stem for c in captures]
    if len(set(stems)) != len(stems):
        raise SimedError("two captures share a file name; their output folders would collide")
    if scheduler is None:
        return [reprocess_one(Path(c), out_root, settings) for c in captures]
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise SimedError("the Dask scheduler needs `dask[distributed]` (a project dependency): reinstall") from None
    logging.getLogger("distributed").setLevel(logging.WARNING)
    if scheduler == "local":
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                               host="127.0.0.1")
        client = Client(cluster)
    else:
        try:
            client, cluster = Client(scheduler, timeout="10s"), None
        except (OSError, TimeoutError) as error:
            raise SimedError(f"cannot reach the Dask scheduler at {scheduler}: {error}") from None
    try:
        futures = [client.submit(reprocess_one, Path(c), Path(out_root), settings, pure=False) for c in captures]
        return client.gather(futures)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
