"""How many job-status requests per second the API answers while a carve job runs (loopback only).

Starts ``moecarve serve`` (one worker) on 127.0.0.1 with a fresh data dir, a tiny random deep llama
and a job long enough to outlast the measurement; then, for each phase, C concurrent clients send
``GET /v1/jobs/{id}`` back to back until the phase's time or request budget runs out:
- ``job running``: the worker is carving (checked before and after the phase);
- ``idle``: the same after the job was cancelled (the worker waits).
Prints a table and writes JSON. The load generator shares the machine with the server and the
worker, so the numbers are a lower bound of what the API alone could serve.

    PYTHONPATH=. python bench/api_load.py --duration 10 --concurrency 8 --out bench/results/api_load.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
MAX_DURATION_S = 120.0
MAX_REQUESTS = 200_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_inputs(root: Path, layers: int) -> dict[str, Any]:
    """A tiny random llama with many layers and calibration text; the recipe of a long job."""
    sys.path.insert(0, str(REPO / "tests"))
    import torch
    from tiny import CONFIGS, tiny_tokenizer  # the test suite's tiny tokenizer (no download)
    from transformers import AutoConfig, AutoModelForCausalLM

    from moecarve.calibration import embedded_text

    torch.manual_seed(0)
    config = AutoConfig.for_model("llama", **{**CONFIGS["llama"], "num_hidden_layers": layers})
    AutoModelForCausalLM.from_config(config).save_pretrained(root / "model")
    tiny_tokenizer().save_pretrained(root / "model")
    (root / "calib.txt").write_text(embedded_text("calibration")[:400_000])
    return {
        "model": str(root / "model"),
        "moe": {"num_experts": 6, "num_experts_per_tok": 2, "num_shared_experts": 2},
        "calibration": {
            "path": str(root / "calib.txt"),
            "num_calibration_samples": 32,
            "max_seq_length": 256,
        },
        "evaluation": {"enabled": False},
        "profile": {"sample_tokens": 512},
    }


async def hammer(
    url: str, key: str, path: str, duration: float, budget: int, concurrency: int
) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    sent = 0
    deadline = time.perf_counter() + duration
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {key}"}, limits=limits, timeout=10
    ) as http:

        async def loop() -> None:
            nonlocal errors, sent
            while sent < budget and time.perf_counter() < deadline:
                sent += 1
                start = time.perf_counter()
                try:
                    r = await http.get(path)
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - start)
                errors += not ok

        start = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    latencies.sort()
    q = statistics.quantiles(latencies, n=100) if len(latencies) >= 2 else [latencies[0]] * 99
    return {
        "requests": len(latencies),
        "errors": errors,
        "seconds": round(elapsed, 3),
        "requests_per_second": round(len(latencies) / elapsed, 1),
        "p50_ms": round(q[49] * 1e3, 2),
        "p95_ms": round(q[94] * 1e3, 2),
        "p99_ms": round(q[98] * 1e3, 2),
    }


def job_status(url: str, key: str, job_id: str) -> dict[str, Any]:
    r = httpx.get(f"{url}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    r.raise_for_status()
    return r.json()  # type: ignore[no-any-return]


def wait_running(url: str, key: str, job_id: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = job_status(url, key, job_id)
        if job["status"] == "running" and job["progress"]["stage"] == "carve":
            return
        if job["status"] not in ("queued", "running"):
            raise RuntimeError(f"bench job ended early: {job['status']} {job.get('error')}")
        time.sleep(0.2)
    raise TimeoutError("bench job did not start carving")


def start_server(data: Path, root: Path, key: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "MOECARVE_API_KEYS": key,
        "HF_HUB_OFFLINE": "1",
        "MOECARVE_WORKER_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    args = [
        sys.executable,
        "-m",
        "moecarve",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--data-dir",
        str(data),
        "--allow-root",
        str(root),
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(
        args, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    raise TimeoutError("server not ready")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--duration",
        type=float,
        default=10.0,
        help=f"seconds per phase (at most {MAX_DURATION_S:.0f})",
    )
    p.add_argument(
        "--max-requests",
        type=int,
        default=50_000,
        help=f"requests per phase (at most {MAX_REQUESTS})",
    )
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument(
        "--layers",
        type=int,
        default=256,
        help="layers of the bench model (the job must outlast the run)",
    )
    p.add_argument("--out", default="bench/results/api_load.json")
    args = p.parse_args()
    duration, budget = min(args.duration, MAX_DURATION_S), min(args.max_requests, MAX_REQUESTS)

    key, port = secrets.token_urlsafe(24), free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="moecarve-bench-") as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        recipe = build_inputs(root, args.layers)
        proc = start_server(Path(tmp) / "data", root, key, port, Path(tmp) / "server.log")
        try:
            results: dict[str, Any] = {}
            r = httpx.post(
                f"{url}/v1/jobs",
                json={"recipe": recipe},
                headers={"Authorization": f"Bearer {key}"},
                timeout=30,
            )
            r.raise_for_status()
            job_id = r.json()["id"]
            path = f"/v1/jobs/{job_id}"
            wait_running(url, key, job_id)
            results["job running"] = asyncio.run(
                hammer(url, key, path, duration, budget, args.concurrency)
            )
            after = job_status(url, key, job_id)
            results["job running"]["job_still_running"] = after["status"] == "running"
            results["job running"]["job_progress"] = after["progress"]
            httpx.post(
                f"{url}{path}/cancel", headers={"Authorization": f"Bearer {key}"}, timeout=10
            )
            deadline = time.monotonic() + 60
            while (
                job_status(url, key, job_id)["status"] != "cancelled"
                and time.monotonic() < deadline
            ):
                time.sleep(0.2)
            results["idle"] = asyncio.run(
                hammer(url, key, path, duration, budget, args.concurrency)
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    report = {
        "endpoint": "GET /v1/jobs/{id}",
        "concurrency": args.concurrency,
        "duration_s": duration,
        "max_requests": budget,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_avg": os.getloadavg(),
        },
        "phases": results,
    }
    print(
        f"{'phase':<12} {'requests':>9} {'errors':>7} {'req/s':>8} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7}"
    )
    for name, row in results.items():
        print(
            f"{name:<12} {row['requests']:>9} {row['errors']:>7} {row['requests_per_second']:>8} "
            f"{row['p50_ms']:>7} {row['p95_ms']:>7} {row['p99_ms']:>7}"
        )
    running = results["job running"]
    print(
        f"job still running after the 'job running' phase: {running['job_still_running']} "
        f"(progress {running['job_progress']['stage']} {running['job_progress']['step']}/{running['job_progress']['total']})"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")
    return 0 if running["job_still_running"] and not running["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
