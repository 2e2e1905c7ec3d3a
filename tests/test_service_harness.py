"""Harness of the service tests: real ``moecarve serve`` / ``moecarve worker`` processes on 127.0.0.1.

No tests here; test modules import the fixtures. Each service runs in its own session (process
group) so a test can always end it, workers included, by that group id.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from moecarve.client import Client

REPO = Path(__file__).resolve().parents[1]
KEY_A = "test-key-alice-0123456789"
KEY_B = "test-key-bob-0123456789ab"
DEEP_LAYERS = 32


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Service:
    """``python -m moecarve serve|worker`` as a subprocess in its own process group."""

    def __init__(
        self,
        data_dir: Path,
        roots: list[Path],
        *,
        command: str = "serve",
        workers: int = 1,
        **env: str,
    ) -> None:
        self.data_dir, self.roots, self.command, self.workers = data_dir, roots, command, workers
        self.port = free_port()
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            "HF_HUB_OFFLINE": "1",
            "MOECARVE_API_KEYS": f"{KEY_A},{KEY_B}",
            "MOECARVE_WORKER_THREADS": "1",
            "MOECARVE_POLL_INTERVAL_S": "0.2",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / f"{data_dir.name}-{command}-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> Service:
        args = [
            sys.executable,
            "-m",
            "moecarve",
            self.command,
            "--data-dir",
            str(self.data_dir),
            "--workers",
            str(self.workers),
        ]
        args += [a for r in self.roots for a in ("--allow-root", str(r))]
        if self.command == "serve":
            args += ["--port", str(self.port), "--log-level", "warning"]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                args, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        if self.command == "serve":
            self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"service exited with {self.proc.returncode}:\n{self.log_text()}"
                )
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"service not ready after {timeout}s:\n{self.log_text()}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def client(self, key: str = KEY_A) -> Client:
        return Client(self.url, key)

    def http(self, key: str | None = KEY_A) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30.0)

    def worker_pids(self) -> list[int]:
        """Worker processes: spawned children of this service (not multiprocessing's helpers)."""
        assert self.proc is not None
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
                cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ")
            except (OSError, IndexError, ValueError):
                continue
            if (
                ppid == self.proc.pid
                and b"spawn_main" in cmdline
                and b"resource_tracker" not in cmdline
            ):
                pids.append(int(stat.parent.name))
        return pids

    def send(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        """Stop the service (default: gracefully); the whole group is killed if it lingers."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # stragglers of this group only
        self.proc.wait()
        return self.proc.returncode


def wait_for(
    predicate: Any, timeout: float = 60.0, interval: float = 0.1, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def wait_status(
    client: Client, job_id: str, statuses: tuple[str, ...], timeout: float = 60.0
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        job = client.job(job_id)
        return job if job["status"] in statuses else None

    return wait_for(check, timeout, 0.1, f"job {job_id} to be {statuses}")  # type: ignore[no-any-return]


def wait_carving(client: Client, job_id: str, after: int = 0) -> int:
    """Follow the job's events (after event ``after``) until it carves layers; the layer count."""
    for event in client.events(job_id, after=after):
        if event.kind == "progress" and event.data["stage"] == "carve":
            return int(event.data["total"])
        if event.kind == "status" and event.data["status"] in ("succeeded", "failed", "cancelled"):
            raise AssertionError(f"job {job_id} ended before carving: {event.data}")
    raise AssertionError("event stream ended before carving")


# --- fixtures --------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def shared_service(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``moecarve serve`` with one worker, shared by the service test modules (a cold worker,
    importing torch and transformers, costs seconds: it warms up while the models are built).

    Its allowed root is the directory of ``service_root``.
    """
    root = Path(os.path.realpath(tmp_path_factory.mktemp("service-root")))
    svc = Service(tmp_path_factory.mktemp("service") / "data", [root])
    svc.start()
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def service(shared_service: Service, service_root: Path) -> Service:
    """The shared service, (re)started if a test stopped it."""
    if shared_service.proc is None or shared_service.proc.poll() is not None:
        shared_service.start()
    return shared_service


@pytest.fixture(scope="session")
def service_root(shared_service: Service, tokenizer: Any) -> Path:
    """The allowed root: a tiny llama, a deep tiny llama and calibration text."""
    import torch
    from tiny import CONFIGS, save_tiny
    from transformers import AutoConfig, AutoModelForCausalLM

    from moecarve.calibration import embedded_text

    (root,) = shared_service.roots
    save_tiny("llama", root / "llama", tokenizer)
    torch.manual_seed(0)
    config = AutoConfig.for_model("llama", **{**CONFIGS["llama"], "num_hidden_layers": DEEP_LAYERS})
    AutoModelForCausalLM.from_config(config).save_pretrained(root / "deep")
    tokenizer.save_pretrained(root / "deep")
    (root / "calib.txt").write_text(embedded_text("calibration")[:60_000])
    return root


def small_recipe(root: Path, **changes: Any) -> dict[str, Any]:
    """A fast carve of the 2-layer llama (about a second in a warm worker)."""
    recipe = {
        "model": str(root / "llama"),
        "moe": {"num_experts": 6, "num_experts_per_tok": 2, "num_shared_experts": 2},
        "calibration": {
            "path": str(root / "calib.txt"),
            "num_calibration_samples": 4,
            "max_seq_length": 64,
        },
        "evaluation": {"path": str(root / "calib.txt"), "max_windows": 2, "window": 64},
        "profile": {"sample_tokens": 128},
    }
    recipe.update(changes)
    return recipe


def deep_recipe(root: Path) -> dict[str, Any]:
    """A carve of the deep llama that takes seconds in its layer loop (for cancel / kill tests)."""
    return {
        "model": str(root / "deep"),
        "moe": {"num_experts": 6, "num_experts_per_tok": 2, "num_shared_experts": 2},
        "calibration": {
            "path": str(root / "calib.txt"),
            "num_calibration_samples": 16,
            "max_seq_length": 128,
        },
        "evaluation": {"enabled": False},
        "profile": {"sample_tokens": 256},
    }
