"""A worker process: claims queued jobs one at a time and runs ``moecarve.carve`` on each.

Started with ``spawn`` by ``service.pool`` (never forked: a worker may hold CUDA). torch is
imported on the first job, inside the worker, never by the API process.

Job outcomes:
- carve returns → the manifest (name, size, sha256) and ``succeeded`` in one transaction;
- ``CancelledError`` (checked between layers, and at every progress event before export) →
  ``cancelled``; a library error → ``failed`` with its type and message;
- SIGTERM (service shutdown) → the job goes back to the queue and runs again on restart;
- the process dies (OOM, SIGKILL) → the pool, or any worker once the heartbeat is stale, marks the
  job ``failed`` (WorkerLost). It is not re-queued: a job that kills its worker would loop.
In every case but success the job's directory is removed, so no partial artifact remains.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import threading
import time
from typing import Any

from moecarve.errors import CancelledError, MoecarveError
from moecarve.progress import ProgressEvent
from moecarve.recipe import Recipe
from service.artifacts import checkpoint_dir, job_dir, manifest, remove_job_files
from service.records import JobRecord
from service.settings import Settings
from service.store import JobStore

log = logging.getLogger(__name__)

_JOB_LOGGERS = ("moecarve", "clustering", "routers", "service")


class WorkerShutdown(BaseException):
    """SIGTERM arrived while a job was running (BaseException: library code must not swallow it)."""


def worker_id(pid: int | None = None) -> str:
    return f"{socket.gethostname()}:{pid or os.getpid()}"


def run_worker(settings_data: dict[str, Any]) -> None:
    """Entry point of a spawned worker process."""
    settings = Settings.model_validate(settings_data)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for name in _JOB_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)
    if not settings.allow_hub:
        os.environ["HF_HUB_OFFLINE"] = "1"  # defence in depth: the API already refused hub ids
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Ctrl-C reaches the whole process group: the pool, not the worker, decides how to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    Worker(settings).run()


class _JobLog(logging.Handler):
    """Forwards log records to the job's event stream while it runs."""

    def __init__(self, store: JobStore, job_id: str, worker: str, cap: int) -> None:
        super().__init__(logging.INFO)
        self.store, self.job_id, self.worker, self.cap = store, job_id, worker, cap

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = {
                "level": record.levelname,
                "logger": record.name,
                "message": record.getMessage(),
            }
            self.store.log(self.job_id, self.worker, data, self.cap)
        except Exception:
            self.handleError(record)


class _Heartbeat:
    """Marks the job alive every ``interval`` seconds from a thread (own connection)."""

    def __init__(self, store: JobStore, job_id: str, worker: str, interval: float) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, args=(store, job_id, worker, interval), daemon=True
        )
        self._thread.start()

    def _beat(self, store: JobStore, job_id: str, worker: str, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                store.heartbeat(job_id, worker)
            except Exception:  # a locked database for a moment must not kill the heartbeat
                log.warning("heartbeat of job %s failed", job_id, exc_info=True)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class Worker:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = JobStore(settings.db_path)
        self.id = worker_id()
        self._stopping = False
        self._busy = False
        self._parent = os.getppid()

    def _on_sigterm(self, _signum: int, _frame: Any) -> None:
        self._stopping = True
        if self._busy:
            raise WorkerShutdown()

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self._on_sigterm)
        import torch

        import moecarve.pipeline  # noqa: F401  (warm up: the first job should not wait for imports)

        if self.settings.worker_threads:
            torch.set_num_threads(self.settings.worker_threads)
        log.info("worker %s ready (data dir %s)", self.id, self.settings.data_dir)
        while not self._stopping:
            if os.getppid() != self._parent:
                log.warning("worker %s: its pool process is gone; stopping", self.id)
                break  # nobody would watch or stop us: finish (the job just ended) and exit
            for job_id in self.store.reap(
                stale_after=self.settings.lost_after_s,
                reason="its worker stopped sending heartbeats",
            ):
                log.warning("job %s: worker lost (stale heartbeat); marked failed", job_id)
                remove_job_files(self.settings, job_id)
            job = self.store.claim(self.id)
            if job is None:
                time.sleep(self.settings.poll_interval_s)
                continue
            self._busy = True  # until the carve ends, SIGTERM re-queues the job
            try:
                if self._stopping:  # SIGTERM arrived while claiming
                    raise WorkerShutdown()
                self.execute(job)
            except WorkerShutdown:
                self._requeue(job)
            finally:
                self._busy = False
        log.info("worker %s stopped", self.id)

    def _requeue(self, job: JobRecord) -> None:
        self._busy = False  # a second SIGTERM must not interrupt the hand-back
        os.chdir(self.settings.data_dir)
        remove_job_files(self.settings, job.id)
        self.store.close()  # the signal may have interrupted a transaction: start a fresh connection
        if self.store.requeue(job.id, self.id, "the worker was stopped; the job will run again"):
            log.warning("job %s re-queued: worker stopping", job.id)

    def execute(self, job: JobRecord) -> None:
        from moecarve.pipeline import carve  # torch: in the worker only

        store, settings = self.store, self.settings
        recipe = Recipe.model_validate(job.recipe)
        work = job_dir(settings, job.id)
        work.mkdir(parents=True, exist_ok=True)
        out = checkpoint_dir(settings, job.id)

        def progress(event: ProgressEvent) -> None:
            status = store.progress(
                job.id, self.id, event.stage, event.step, event.total, event.message
            )
            if status == "cancelling" and event.stage != "export":
                raise CancelledError(f"cancelled during {event.stage}")

        def should_cancel() -> bool:
            return store.status(job.id) == "cancelling"

        handler = _JobLog(store, job.id, self.id, settings.max_log_events)
        logging.getLogger().addHandler(handler)
        heartbeat = _Heartbeat(store, job.id, self.id, settings.heartbeat_s)
        os.chdir(work)  # relative names (hub ids) never resolve against the server's directory
        status, error, files = "failed", None, None
        try:
            log.info("job %s: carving %s (%s)", job.id, recipe.model, job.plan.get("layout"))
            carve(recipe, out, progress=progress, should_cancel=should_cancel)
            files = manifest(out)
            status = "succeeded"
        except CancelledError:
            status = "cancelled"
        except MoecarveError as e:
            error = (e.type, str(e))
        except Exception as e:
            # A bug or an environment problem: fail the job, keep the worker alive.
            log.exception("job %s failed", job.id)
            error = (type(e).__name__, str(e))
        finally:
            self._busy = False  # the carve is over: record its outcome whatever arrives now
            os.chdir(settings.data_dir)
            heartbeat.stop()
            logging.getLogger().removeHandler(handler)
            gc.collect()
        if status != "succeeded":
            remove_job_files(settings, job.id)
        if not store.finish(job.id, self.id, status, error=error, artifacts=files):
            remove_job_files(settings, job.id)  # reaped meanwhile (stale heartbeat): drop its files
        log.info("job %s %s", job.id, status)
