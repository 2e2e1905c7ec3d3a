"""Job files on disk: ``<data_dir>/jobs/<id>/checkpoint/`` and a lazily built archive beside it.

A worker carves into ``checkpoint/`` (the library writes a temporary sibling and renames it into
place), then records the manifest (name, size, sha256) in the job row in the same transaction that
marks the job succeeded. Files are only ever served by exact manifest name, so no request path
reaches the filesystem.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from service.settings import Settings

CHECKPOINT = "checkpoint"
_CHUNK = 1 << 20


def job_dir(settings: Settings, job_id: str) -> Path:
    return settings.jobs_dir / job_id


def checkpoint_dir(settings: Settings, job_id: str) -> Path:
    return job_dir(settings, job_id) / CHECKPOINT


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def manifest(directory: Path) -> list[dict[str, Any]]:
    """Every regular file under ``directory`` (relative POSIX name, size, sha256), sorted by name."""
    files = sorted(p for p in directory.rglob("*") if p.is_file() and not p.is_symlink())
    return [
        {
            "name": p.relative_to(directory).as_posix(),
            "size": p.stat().st_size,
            "sha256": sha256_file(p),
        }
        for p in files
    ]


def artifact_path(
    settings: Settings, job_id: str, artifacts: list[dict[str, Any]], name: str
) -> Path | None:
    """The file of artifact ``name`` if the manifest lists it (the only way a name maps to a path)."""
    if name not in {a["name"] for a in artifacts}:
        return None
    root = checkpoint_dir(settings, job_id).resolve()
    path = (root / name).resolve()
    return path if path.is_relative_to(root) and path.is_file() else None


def archive(settings: Settings, job_id: str, artifacts: list[dict[str, Any]]) -> Path:
    """``<id>.tar`` of the whole checkpoint (flat member names), built once, atomically."""
    target = job_dir(settings, job_id) / f"{job_id}.tar"
    if target.is_file():
        return target
    root = checkpoint_dir(settings, job_id)
    fd, tmp = tempfile.mkstemp(prefix=f".{job_id}.tar.", dir=target.parent)
    try:
        with (
            os.fdopen(fd, "wb") as f,
            tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            for a in artifacts:
                info = tar.gettarinfo(str(root / a["name"]), arcname=a["name"])
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mode = 0o644
                with (root / a["name"]).open("rb") as src:
                    tar.addfile(info, src)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def remove_job_files(settings: Settings, job_id: str) -> None:
    shutil.rmtree(job_dir(settings, job_id), ignore_errors=True)
