"""Processes a test starts (workers, the scheduler), stopped by pid, and their logs."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path

from tests.support.waits import wait_for


class Processes:
    """The worker (restartable) and the scheduler, started and stopped by pid."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.worker: subprocess.Popen[bytes] | None = None
        self.scheduler: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start_worker(self) -> None:
        self.starts += 1
        log = (self.log_dir / f"worker-{self.starts}.log").open("wb")
        self.worker = subprocess.Popen(
            [sys.executable, "-m", "dramatiq", "nexes.jobs", "--processes", "1", "--threads", "2"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start_scheduler(self) -> None:
        log = (self.log_dir / "scheduler.log").open("wb")
        self.scheduler = subprocess.Popen(
            [sys.executable, "-m", "nexes.cli", "scheduler"], env=self.env, stdout=log, stderr=subprocess.STDOUT
        )

    def worker_children(self) -> list[int]:
        assert self.worker
        path = Path(f"/proc/{self.worker.pid}/task/{self.worker.pid}/children")
        try:
            return [int(p) for p in path.read_text().split()]
        except OSError:
            return []

    def kill_worker(self) -> None:
        """SIGKILL the worker process(es) that run actors; the dramatiq parent then exits."""
        assert self.worker
        children = self.worker_children()
        for pid in children:
            os.kill(pid, signal.SIGKILL)
        try:
            self.worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.worker.pid, signal.SIGKILL)
            self.worker.wait(timeout=5)

    def stop(self) -> None:
        for proc in (self.worker, self.scheduler):
            if proc and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self.worker:  # the worker's own children, by its process group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.worker.pid, signal.SIGKILL)


def logged(log: Path, text: str) -> bool:
    """Whether the process writing `log` has logged `text` so far."""
    return text in log.read_text()


def wait_for_log(log: Path, text: str, timeout: float = 20.0) -> bool:
    """Until the process writing `log` logs `text`; whether it did within `timeout` s."""
    return wait_for(lambda: logged(log, text), timeout)


_HANDED_OUT: set[int] = set()
LOWEST_PORT = 20_000  # above the stacks' ports (15430..., 16430...)


def free_port() -> int:
    """A TCP port free on loopback now, for a server a test starts.

    Below the kernel's ephemeral range (net.ipv4.ip_local_port_range, 32768-60999 by
    default): a port the OS picks from that range can be taken by any outgoing connection
    (a worker's to PostgreSQL or Redis) between this check and the server's bind, which
    once failed CI with "address already in use". Each port is handed out once per run."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as ranges:
        ephemeral_low = int(ranges.read().split()[0])
    for _ in range(500):
        if ephemeral_low <= LOWEST_PORT + 100:
            break  # no room below the ephemeral range: let the OS pick
        port = random.randrange(LOWEST_PORT, ephemeral_low)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
