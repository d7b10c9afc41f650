"""The jobs check of the API monitor's round: import jobs by state, the most overdue import
lease and the partition horizon, written to the gauges of /metrics (a scrape reads no
database). One statement on the API's primary pool, at most every OPS_EVERY seconds."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from nexes.db.connect.router import Router
from nexes.db.ops_state import OpsState, ops_state
from nexes.metrics import IMPORT_JOBS, IMPORT_LEASE_OVERDUE, PARTITION_HORIZON

OPS_EVERY = 15.0
# Every state gets a series, 0 when no job is in it (an absent series cannot alert).
IMPORT_STATES = ("UPLOADING", "QUEUED", "RUNNING", "SUCCEEDED", "PARTIAL", "FAILED", "CANCELLED")


class OpsCheck:
    name = "jobs"

    def __init__(self, router: Router, timeout: float) -> None:
        self.router = router
        self.timeout = timeout
        self._last: tuple[float, dict[str, Any]] | None = None

    async def probe(self) -> dict[str, Any]:
        if self._last is not None and time.monotonic() - self._last[0] < OPS_EVERY:
            return self._last[1]
        # Tried again OPS_EVERY seconds after a failure too: one warning per try, not per round.
        self._last = (time.monotonic(), {"reachable": False})
        state = await asyncio.wait_for(self.router.read(ops_state, fresh=True), self.timeout)
        _record(state)
        report = {"reachable": True, "imports": state.jobs, "overdue_lease_seconds": state.overdue_seconds}
        self._last = (time.monotonic(), report)
        return report

    async def aclose(self) -> None:
        pass


def _record(state: OpsState) -> None:
    for status in {*IMPORT_STATES, *state.jobs}:
        IMPORT_JOBS.labels(status).set(state.jobs.get(status, 0))
    IMPORT_LEASE_OVERDUE.set(state.overdue_seconds)
    if state.horizon_seconds is not None:
        PARTITION_HORIZON.set(state.horizon_seconds)
