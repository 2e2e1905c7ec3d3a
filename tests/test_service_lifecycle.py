"""Process failures: a worker killed mid-job, the API killed with jobs queued, a graceful stop
with a job running (this one stops the shared service: keep it last)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from test_service_harness import (
    Service,
    deep_recipe,
    small_recipe,
    wait_carving,
    wait_for,
    wait_status,
)

from service.store import JobStore

pytestmark = pytest.mark.integration
# The harness fixtures, registered once as a plugin (a session service shared by the modules).
pytest_plugins = ["test_service_harness"]


def test_worker_killed_mid_job_fails_it_without_artifacts(
    service: Service, service_root: Path
) -> None:
    with service.client() as client:
        job = client.submit(deep_recipe(service_root))
        wait_carving(client, job["id"])
        (worker,) = service.worker_pids()
        os.kill(worker, signal.SIGKILL)

        final = wait_status(client, job["id"], ("failed", "succeeded", "cancelled"), timeout=15)
        assert final["status"] == "failed", final
        assert final["error"]["type"] == "WorkerLost" and "SIGKILL" in final["error"]["message"]
        assert client.artifacts(job["id"]) == []
        assert not (service.data_dir / "jobs" / job["id"]).exists()  # no partial files left behind
        statuses = [e.data["status"] for e in client.events(job["id"]) if e.kind == "status"]
        assert statuses == ["queued", "running", "failed"]
    # The pool starts a new worker in its place.
    wait_for(lambda: service.worker_pids() not in ([], [worker]), 20, what="a replacement worker")


def test_api_restart_mid_queue_loses_no_job(service_root: Path, tmp_path: Path) -> None:
    """An API-only server is killed (SIGKILL) with jobs queued and restarted; then ``moecarve
    worker``, started alone on the same data dir, runs them."""
    data = tmp_path / "data"
    api = Service(data, [service_root], workers=0).start()
    with api.client() as client:
        queued = [client.submit(small_recipe(service_root, seed=s))["id"] for s in (11, 12)]
    api.stop(signal.SIGKILL)  # a crash, not a clean shutdown
    api.start()  # the same store, a new process
    try:
        with api.client() as client:
            still = {j["id"]: j for j in client.jobs(status=["queued"])["items"]}
            assert set(still) == set(queued)
            assert all(
                still[i]["recipe"]["calibration"]["path"] == str(service_root / "calib.txt")
                for i in queued
            )
            worker = Service(data, [service_root], command="worker").start()
            try:
                for job_id in queued:
                    assert client.wait(job_id, timeout=120)["status"] == "succeeded", (
                        worker.log_text()
                    )
                    assert client.artifacts(job_id)
            finally:
                assert worker.stop() == 0, worker.log_text()  # SIGTERM: a clean stop
    finally:
        api.stop()


def test_graceful_stop_requeues_the_running_job(service: Service, service_root: Path) -> None:
    with service.client() as client:
        job = client.submit(deep_recipe(service_root))
        wait_carving(client, job["id"])
    assert service.stop(signal.SIGTERM) == 128 + signal.SIGTERM, service.log_text()
    assert service.worker_pids() == []
    record = JobStore(service.data_dir / "jobs.sqlite3").get(job["id"])
    assert record is not None and record.status == "queued" and record.worker is None, record
    assert not (service.data_dir / "jobs" / job["id"]).exists()
