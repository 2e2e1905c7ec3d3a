"""The worker pool: N spawned worker processes, watched and restarted.

Runs inside ``moecarve serve`` (a thread beside uvicorn) or ``moecarve worker`` (the main thread).
It never imports torch itself. Each check:
- a worker that died has its active job failed (WorkerLost; a cancelling one becomes cancelled),
  the job's files removed, and is restarted (with back-off when it keeps dying young);
- a worker whose job has been cancelling for longer than ``cancel_grace_s`` (stuck in a stage
  that does not check for cancellation) is killed, which the next check turns into ``cancelled``.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
import time
from multiprocessing.process import BaseProcess

from service.artifacts import remove_job_files
from service.settings import Settings
from service.store import JobStore
from service.worker import run_worker, worker_id

log = logging.getLogger(__name__)

CHECK_S = 0.5
YOUNG_S = 10.0  # a worker dying sooner than this after start counts towards back-off
MAX_BACKOFF_S = 60.0


def describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "is still running"
    if exitcode < 0:
        return f"was killed by {signal.Signals(-exitcode).name}"
    return f"exited with code {exitcode}"


class WorkerPool:
    def __init__(self, settings: Settings, count: int | None = None) -> None:
        self.settings = settings
        self.count = settings.workers if count is None else count
        self._ctx = multiprocessing.get_context("spawn")
        self._procs: list[BaseProcess | None] = [None] * self.count
        self._started = [0.0] * self.count
        self._not_before = [0.0] * self.count
        self._backoff = [0.0] * self.count
        self._store = JobStore(settings.db_path)
        self._stop = threading.Event()
        self._signalled: set[int] = set()  # worker pids already sent SIGTERM
        # Workers get no API keys: they never authenticate anyone.
        self._payload = settings.model_dump(mode="json", exclude={"api_keys", "api_keys_file"})

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p is not None and p.pid is not None]

    def start(self) -> None:
        for i in range(self.count):
            self._spawn(i)

    def _spawn(self, i: int) -> None:
        proc = self._ctx.Process(
            target=run_worker, args=(self._payload,), name=f"moecarve-worker-{i}"
        )
        proc.start()
        self._procs[i], self._started[i] = proc, time.monotonic()
        log.info("started worker %d (pid %s)", i, proc.pid)

    def _collect(self, i: int, proc: BaseProcess) -> None:
        proc.join(0)
        reason = f"worker process {proc.pid} {describe_exit(proc.exitcode)}"
        for job_id in self._store.reap(workers=[worker_id(proc.pid)], reason=reason):
            log.warning("job %s: %s", job_id, reason)
            remove_job_files(self.settings, job_id)
        self._procs[i] = None
        young = time.monotonic() - self._started[i] < YOUNG_S
        self._backoff[i] = min(MAX_BACKOFF_S, max(1.0, 2 * self._backoff[i])) if young else 0.0
        self._not_before[i] = time.monotonic() + self._backoff[i]
        if not self._stop.is_set():
            log.warning(
                "%s; restarting it%s",
                reason,
                f" in {self._backoff[i]:.0f}s" if self._backoff[i] else "",
            )

    def check(self) -> None:
        for i, proc in enumerate(self._procs):
            if proc is not None and not proc.is_alive():
                self._collect(i, proc)
            if (
                self._procs[i] is None
                and not self._stop.is_set()
                and time.monotonic() >= self._not_before[i]
            ):
                self._spawn(i)
        live = {worker_id(p.pid): p for p in self._procs if p is not None and p.is_alive()}
        for wid in self._store.overdue_cancels(list(live), self.settings.cancel_grace_s):
            log.warning(
                "worker %s did not stop its cancelled job within %.0fs: killing it",
                wid,
                self.settings.cancel_grace_s,
            )
            live[wid].kill()

    def request_stop(self) -> None:
        """Make ``run()`` return (safe from a signal handler); ``stop()`` then stops the workers."""
        self._stop.set()

    def signal_workers(self) -> None:
        """``request_stop()`` and SIGTERM the live workers now (safe from a signal handler): a
        running job goes back to the queue at once instead of running on while the HTTP server
        drains its connections. ``stop()`` then waits for them."""
        self._stop.set()
        for p in self._procs:
            if (
                p is not None
                and p.pid is not None
                and p.is_alive()
                and p.pid not in self._signalled
            ):
                self._signalled.add(p.pid)
                p.terminate()

    def run(self) -> None:
        """Watch the workers until ``stop()``."""
        while not self._stop.wait(CHECK_S):
            try:
                self.check()
            except Exception:  # e.g. the database locked for too long: try again next round
                log.exception("worker pool check failed")

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM every worker (a running job goes back to the queue), then kill stragglers."""
        self.signal_workers()  # those already signalled by the server's exit handler are not again
        procs = [(i, p) for i, p in enumerate(self._procs) if p is not None]
        deadline = time.monotonic() + timeout
        for _, p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join()
        for i, p in procs:
            self._collect(i, p)
