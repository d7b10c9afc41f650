"""What a running import costs, sampled from outside: worker memory, the worker's SQL, its Python stacks.

Nothing here touches the worker: memory comes from /proc, statements from
pg_stat_activity (pg_stat_statements is not installed), stacks from py-spy when it is
given (it is not a project requirement: `pip install --target /tmp/pyspy py-spy`).
"""

from __future__ import annotations

import collections
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

# The worker's statements: the request-id comment stripped, whitespace folded, cut short.
LEADING_COMMENT = re.compile(r"^\s*(/\*.*?\*/\s*)+", re.S)
ACTIVE = """
SELECT query, coalesce(wait_event_type || ':' || wait_event, 'CPU') FROM pg_stat_activity
WHERE datname = %s AND usename = 'nexes_worker' AND state = 'active' AND pid <> pg_backend_pid()
"""
LINE_NO = re.compile(r":\d+\)$")  # tally per function, not per line
IDLE_KEY = "(no statement running: the worker is in Python or between statements)"


def descendants(root: int) -> list[int]:
    """`root` and every process below it, from /proc (dramatiq forks its worker processes)."""
    parents: dict[int, list[int]] = collections.defaultdict(list)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(fields[1])].append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(parents.get(pid, []))
    return found


def status_kib(pid: int, field: str = "VmRSS") -> int:
    """A /proc/PID/status figure in KiB (VmRSS, VmHWM); 0 once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def short(query: str, width: int = 160) -> str:
    return " ".join(LEADING_COMMENT.sub("", query).split())[:width]


class Sampler(threading.Thread):
    """Every 0.2 s: the worker's running statements; every 0.5 s: the worker tree's memory."""

    def __init__(self, root_pid: int, conninfo: str, dbname: str) -> None:
        super().__init__(name="bench-sampler", daemon=True)
        self.root_pid, self.conninfo, self.dbname = root_pid, conninfo, dbname
        self.stop = threading.Event()
        self.statements: collections.Counter[str] = collections.Counter()
        self.waits: collections.Counter[str] = collections.Counter()
        self.ticks = 0
        self.peak_tree_kib = 0
        self.peak_hwm_kib: dict[int, int] = {}

    def run(self) -> None:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            next_memory = 0.0
            while not self.stop.wait(0.2):
                self._statements(conn)
                if time.monotonic() >= next_memory:
                    self._memory()
                    next_memory = time.monotonic() + 0.5

    def _statements(self, conn: psycopg.Connection[Any]) -> None:
        rows = conn.execute(ACTIVE, [self.dbname]).fetchall()
        self.ticks += 1
        if not rows:
            self.statements[IDLE_KEY] += 1
        for query, wait in rows:
            self.statements[short(query)] += 1
            self.waits[wait] += 1

    def _memory(self) -> None:
        pids = descendants(self.root_pid)
        self.peak_tree_kib = max(self.peak_tree_kib, sum(status_kib(p, "VmRSS") for p in pids))
        for pid in pids:
            self.peak_hwm_kib[pid] = max(self.peak_hwm_kib.get(pid, 0), status_kib(pid, "VmHWM"))

    def figures(self, top: int = 12) -> dict[str, Any]:
        ticks = max(1, self.ticks)
        return {
            "peak_worker_rss_mib": round(max(self.peak_hwm_kib.values(), default=0) / 1024, 1),
            "peak_worker_tree_rss_mib": round(self.peak_tree_kib / 1024, 1),
            "sql_samples": self.ticks,
            "sql_share": [{"share": round(n / ticks, 3), "statement": q} for q, n in self.statements.most_common(top)],
            "sql_waits": {w: round(n / ticks, 3) for w, n in self.waits.most_common(8)},
        }


class PySpy:
    """`py-spy record --format raw` of one process; `top()` tallies the innermost project frames."""

    def __init__(self, exe: str, pid: int, out: Path) -> None:
        self.out = out
        cmd = [exe, "record", "--format", "raw", "--rate", "50", "--nonblocking", "-o", str(out), "-p", str(pid)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def finish(self, top: int = 15) -> dict[str, Any]:
        self.proc.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C as on exit
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if not self.out.exists():
            return {"py_spy": "no profile written"}
        return tally_stacks(self.out.read_text(), top)


def tally_stacks(raw: str, top: int) -> dict[str, Any]:
    """Shares of samples by innermost frame (`self`) and by any frame on the stack (`total`)."""
    own: collections.Counter[str] = collections.Counter()
    anywhere: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = [LINE_NO.sub(")", f.strip()) for f in stack.split(";")]
        if frames and "(idle)" in frames[0]:
            continue
        samples += n
        own[frames[-1]] += n
        for frame in set(frames):
            anywhere[frame] += n
    total = max(1, samples)
    return {
        "py_samples": samples,
        "py_self": [{"share": round(n / total, 3), "frame": f} for f, n in own.most_common(top)],
        "py_total": [{"share": round(n / total, 3), "frame": f} for f, n in anywhere.most_common(top)],
    }
