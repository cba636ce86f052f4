"""`simed phase-worker`: a phase-retrieval worker for a live pipeline's fan-out, on any machine
that can reach the pipeline's endpoints (beyond loopback: with keys, docs/security.md)."""

from __future__ import annotations

from pydantic import Field

from simed_stream.config import Settings
from simed_stream.links import LinkSecurity


class PhaseWorkerCommand(Settings):
    jobs: str = Field(min_length=1, description="the pipeline's jobs endpoint (its phasing_jobs_endpoint)")
    results: str = Field(min_length=1, description="the pipeline's results endpoint (its phasing_results_endpoint)")
    security: LinkSecurity = LinkSecurity()  # this worker's key pair and the pipeline's public key


def phase_worker(command: PhaseWorkerCommand) -> int:
    """Connect to a live pipeline's phasing endpoints and phase the jobs it deals, until stopped.
    Start one per core on any machine that can reach the endpoints (docs/live.md)."""
    from simed_stream.fanout import serve

    try:
        serve(command.jobs, command.results, command.security)
    except KeyboardInterrupt:
        pass
    return 0
