"""``moecarve serve|worker`` (the service) and ``moecarve submit|status|cancel|download`` (a client).

Registered by ``moecarve.cli`` through ``register(subparsers)``. Only the standard library is
imported at module level, so ``moecarve plan`` does not pay for (or need) FastAPI.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from typing import Any, NoReturn

log = logging.getLogger(__name__)


def _settings(args: argparse.Namespace) -> Any:
    from service.settings import Settings

    return Settings.from_env(
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
        workers=args.workers,
        data_dir=args.data_dir,
        allowed_roots=args.allow_root or None,
        open_access=True if getattr(args, "open", False) else None,
        worker_threads=args.worker_threads,
    )


def _raise_exit(signum: int, _frame: Any) -> NoReturn:
    raise SystemExit(128 + signum)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.app import create_app
    from service.pool import WorkerPool

    logging.getLogger("service").setLevel(logging.INFO)
    settings = _settings(args)
    app = create_app(settings)
    if settings.open_access and settings.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning(
            "open access (no API keys) on %s: anyone who can reach this port can run jobs",
            settings.host,
        )
    # uvicorn re-raises the signal that stopped it; turn SIGTERM into SystemExit so the pool stops.
    signal.signal(signal.SIGTERM, _raise_exit)
    pool = WorkerPool(settings)
    pool.start()
    threading.Thread(target=pool.run, name="worker-pool", daemon=True).start()
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=args.log_level,
        access_log=args.access_log,
        timeout_graceful_shutdown=5,
    )

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            # Stop the workers with the server, not after it has drained its connections (an
            # open event stream holds uvicorn for up to timeout_graceful_shutdown).
            pool.signal_workers()
            super().handle_exit(sig, frame)

    try:
        Server(config).run()
    finally:
        pool.stop()
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from service.pool import WorkerPool

    logging.getLogger("service").setLevel(logging.INFO)
    settings = _settings(args)
    pool = WorkerPool(settings, count=max(1, settings.workers))

    def stop(_signum: int, _frame: Any) -> None:
        pool.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    pool.start()
    try:
        pool.run()
    finally:
        pool.stop()
    return 0


# --- client commands ------------------------------------------------------------------------------
def _client(args: argparse.Namespace) -> Any:
    from moecarve.client import Client

    return Client(args.url, args.api_key)


def _print_event(event: Any) -> None:
    d = event.data
    if event.kind == "progress":
        print(f"[{d['stage']}] {d['step']}/{d['total']} {d.get('message') or ''}", file=sys.stderr)
    elif event.kind == "status":
        error = d.get("error")
        print(
            f"status: {d['status']}" + (f" ({error['type']}: {error['message']})" if error else ""),
            file=sys.stderr,
        )
    else:
        print(f"{d.get('level', 'INFO')} {d.get('message', '')}", file=sys.stderr)


def _show(job: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(job, indent=1))
        return
    p = job["progress"]
    line = f"{job['id']}  {job['status']:<10}  {job['plan']['layout']:<10}  {p['stage'] or '-'} {p['step']}/{p['total']}"
    if job.get("error"):
        line += f"  {job['error']['type']}: {job['error']['message']}"
    print(line)


def cmd_submit(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.submit(args.recipe, label=args.label, idempotency_key=args.idempotency_key)
        if args.wait:
            job = client.wait(job["id"], on_event=_print_event)
        _show(job, args.json)
    return 0 if job["status"] not in ("failed", "cancelled") else 1


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.job:
            _show(client.job(args.job), args.json)
            return 0
        page = client.jobs(status=args.status, limit=args.limit)
    if args.json:
        print(json.dumps(page, indent=1))
    else:
        for job in page["items"]:
            _show(job, False)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _show(client.cancel(args.job), args.json)
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    with _client(args) as client:
        out = client.download(args.job, args.out_dir)
    print(f"checkpoint: {out.resolve()}")
    return 0


def _service_args(p: argparse.ArgumentParser, *, api: bool) -> None:
    p.add_argument("--data-dir", help="job database and artifacts (env MOECARVE_DATA_DIR)")
    p.add_argument("--workers", type=int, help="worker processes (env MOECARVE_WORKERS; default 1)")
    p.add_argument(
        "--worker-threads", type=int, help="torch threads per worker (env MOECARVE_WORKER_THREADS)"
    )
    p.add_argument(
        "--allow-root",
        action="append",
        help="allowed root for model/text paths (repeatable; env MOECARVE_ALLOWED_ROOTS)",
    )
    if api:
        p.add_argument("--host", help="bind address (env MOECARVE_HOST; default 127.0.0.1)")
        p.add_argument("--port", type=int, help="port (env MOECARVE_PORT; default 8000)")
        p.add_argument(
            "--open",
            action="store_true",
            help="no API keys: local use only (env MOECARVE_OPEN_ACCESS=1)",
        )
        p.add_argument(
            "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
        )
        p.add_argument("--access-log", action="store_true", help="log every request")


def _client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="service URL (env MOECARVE_URL; default http://127.0.0.1:8000)")
    p.add_argument("--api-key", help="API key (env MOECARVE_API_KEY)")
    p.add_argument("--json", action="store_true", help="print the job resource as JSON")


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the HTTP job service: API and worker processes")
    _service_args(p, api=True)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("worker", help="run job worker processes only (same data dir as the API)")
    _service_args(p, api=False)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("submit", help="submit a recipe to the job service")
    p.add_argument("recipe", help="recipe YAML (paths in it are paths on the server)")
    p.add_argument("--label")
    p.add_argument("--idempotency-key", help="retry-safe submission key")
    p.add_argument("--wait", action="store_true", help="follow progress until the job finishes")
    _client_args(p)
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("status", help="show a job, or list jobs")
    p.add_argument("job", nargs="?")
    p.add_argument("--status", action="append", help="list only jobs in this state (repeatable)")
    p.add_argument("--limit", type=int, default=50)
    _client_args(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("cancel", help="cancel a queued or running job")
    p.add_argument("job")
    _client_args(p)
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("download", help="download a finished job's checkpoint")
    p.add_argument("job")
    p.add_argument("out_dir")
    _client_args(p)
    p.set_defaults(func=cmd_download)
