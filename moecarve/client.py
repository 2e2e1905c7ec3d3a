"""A small client of the moecarve job service (httpx; never imports torch).

    from moecarve.client import Client

    with Client("http://127.0.0.1:8000", api_key="...") as c:
        job = c.submit("recipe.yaml")
        job = c.wait(job["id"], on_event=print)
        c.download(job["id"], "carved/")

``url`` and ``api_key`` default to the ``MOECARVE_URL`` and ``MOECARVE_API_KEY`` environment variables.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moecarve.errors import MoecarveError
from moecarve.recipe import Recipe

try:
    import httpx
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("moecarve.client needs httpx: pip install 'moecarve[service]'") from e

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL = ("succeeded", "failed", "cancelled")


class ServiceError(MoecarveError):
    """The service answered with an error status."""

    def __init__(self, status_code: int, detail: Any) -> None:
        self.status_code, self.detail = status_code, detail
        super().__init__(f"HTTP {status_code}: {_describe(detail)}")

    @property
    def type(self) -> str:
        if isinstance(self.detail, dict) and "type" in self.detail:
            return str(self.detail["type"])
        return "ValidationError" if self.status_code == 422 else "ServiceError"


def _describe(detail: Any) -> str:
    if isinstance(detail, dict):  # {"type", "message"}: the type is ServiceError.type
        return str(detail.get("message", detail))
    if isinstance(detail, list):  # FastAPI validation errors
        return "; ".join(
            f"{'.'.join(str(p) for p in d.get('loc', []))}: {d.get('msg')}" for d in detail
        )
    return str(detail)


@dataclass(frozen=True)
class Event:
    """One server-sent event of a job: ``kind`` is status, progress or log."""

    id: int
    kind: str
    data: dict[str, Any]


def parse_sse(lines: Iterator[str]) -> Iterator[Event]:
    """Events of a ``text/event-stream`` (comments and keep-alives skipped)."""
    fields: dict[str, list[str]] = {}
    for line in lines:
        if line == "":
            if "data" in fields:
                yield Event(
                    int(fields.get("id", ["0"])[-1]),
                    fields.get("event", ["message"])[-1],
                    json.loads("\n".join(fields["data"])),
                )
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields.setdefault(name, []).append(value[1:] if value.startswith(" ") else value)


class Client:
    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        transport: Any = None,
    ) -> None:
        url = url or os.environ.get("MOECARVE_URL") or DEFAULT_URL
        api_key = api_key or os.environ.get("MOECARVE_API_KEY")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout = timeout
        self._http = httpx.Client(
            base_url=url, headers=headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self._http.request(method, path, **kwargs)
        if response.is_error:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise ServiceError(response.status_code, detail)
        return response

    # --- jobs ---------------------------------------------------------------------------------
    def submit(
        self,
        recipe: Recipe | dict[str, Any] | str | Path,
        *,
        label: str | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Queue a job; ``recipe`` is a Recipe, a dict, or a YAML file (its paths are server paths)."""
        if isinstance(recipe, str | Path):
            recipe = Recipe.from_yaml(recipe)
        body = (
            recipe.model_dump(mode="json", exclude_none=True)
            if isinstance(recipe, Recipe)
            else recipe
        )
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        payload: dict[str, Any] = {"recipe": body}
        if label is not None:
            payload["label"] = label
        return self._request("POST", "/v1/jobs", json=payload, headers=headers).json()  # type: ignore[no-any-return]

    def job(self, job_id: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/jobs/{job_id}").json()  # type: ignore[no-any-return]

    def jobs(
        self, status: list[str] | None = None, limit: int = 50, cursor: str | None = None
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit, "status": status or []}
        if cursor:
            params["cursor"] = cursor
        return self._request("GET", "/v1/jobs", params=params).json()  # type: ignore[no-any-return]

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._request("POST", f"/v1/jobs/{job_id}/cancel").json()  # type: ignore[no-any-return]

    def delete(self, job_id: str) -> None:
        self._request("DELETE", f"/v1/jobs/{job_id}")

    # --- progress -----------------------------------------------------------------------------
    def events(self, job_id: str, after: int | None = None) -> Iterator[Event]:
        """The job's events after event ``after``, until the stream ends (the job finished)."""
        headers = {"Last-Event-ID": str(after)} if after else {}
        timeout = httpx.Timeout(self.timeout, read=None)
        with self._http.stream(
            "GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=timeout
        ) as response:
            if response.is_error:
                response.read()
                raise ServiceError(response.status_code, response.json().get("detail"))
            yield from parse_sse(response.iter_lines())

    def wait(
        self,
        job_id: str,
        *,
        on_event: Callable[[Event], None] | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Follow the job's events until it finishes (reconnecting with Last-Event-ID); its final state."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last = 0
        while True:
            try:
                for event in self.events(job_id, after=last):
                    last = event.id
                    if on_event is not None:
                        on_event(event)
                    if deadline is not None and time.monotonic() > deadline:
                        raise TimeoutError(f"job {job_id} still running after {timeout}s")
            except httpx.TransportError:
                time.sleep(1.0)  # the connection dropped: resume after the last event seen
            job = self.job(job_id)
            if job["status"] in TERMINAL:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout}s")

    # --- artifacts ----------------------------------------------------------------------------
    def artifacts(self, job_id: str) -> list[dict[str, Any]]:
        return self._request("GET", f"/v1/jobs/{job_id}/artifacts").json()["items"]  # type: ignore[no-any-return]

    def stats(self, job_id: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/jobs/{job_id}/stats").json()  # type: ignore[no-any-return]

    def read(
        self, job_id: str, name: str, start: int | None = None, end: int | None = None
    ) -> bytes:
        """Bytes of one artifact; ``start``/``end`` (inclusive) ask for a byte range."""
        headers = {}
        if start is not None or end is not None:
            headers["Range"] = (
                f"bytes={'' if start is None else start}-{'' if end is None else end}"
            )
        return self._request("GET", f"/v1/jobs/{job_id}/artifacts/{name}", headers=headers).content

    def download(self, job_id: str, out_dir: str | Path) -> Path:
        """The whole checkpoint into ``out_dir`` (new or empty), checked against the sha256 list."""
        out = Path(out_dir)
        if out.exists() and any(out.iterdir()):
            raise MoecarveError(f"{out} exists and is not empty")
        expected = {a["name"]: a for a in self.artifacts(job_id)}
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.download-", dir=out.parent))
        try:
            archive = tmp / "checkpoint.tar"
            with self._http.stream(
                "GET", f"/v1/jobs/{job_id}/archive", timeout=httpx.Timeout(self.timeout, read=None)
            ) as r:
                if r.is_error:
                    r.read()
                    raise ServiceError(r.status_code, r.json().get("detail"))
                with archive.open("wb") as f:
                    for chunk in r.iter_bytes(1 << 20):
                        f.write(chunk)
            files = tmp / "files"
            with tarfile.open(archive) as tar:
                tar.extractall(files, filter="data")  # refuses absolute paths, "..", links out
            _verify(files, expected)
            if out.exists():
                out.rmdir()
            os.replace(files, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return out


def _verify(root: Path, expected: dict[str, dict[str, Any]]) -> None:
    found = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    if found != set(expected):
        raise MoecarveError(
            f"archive files {sorted(found ^ set(expected))} differ from the artifact list"
        )
    for name, a in expected.items():
        digest = hashlib.sha256()
        with (root / name).open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        if digest.hexdigest() != a["sha256"]:
            raise MoecarveError(
                f"{name}: sha256 {digest.hexdigest()} does not match the service's {a['sha256']}"
            )
