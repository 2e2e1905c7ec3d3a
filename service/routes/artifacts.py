"""A finished job's files: the listing, single files (HTTP Range), the archive, routing stats."""

from __future__ import annotations

import json
from pathlib import PurePosixPath
from typing import Any

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import FileResponse

from service.artifacts import archive, artifact_path, checkpoint_dir
from service.deps import JobDep, SettingsDep
from service.records import JobRecord
from service.schemas import API_PREFIX, ArtifactList, ArtifactPublic, JobStatus

router = APIRouter(prefix=f"{API_PREFIX}/jobs", tags=["artifacts"])

_FILE = {
    "content": {"application/octet-stream": {}},
    "description": "The file, or the requested byte range (206).",
}
_NOT_READY = {"description": "The job has not succeeded (artifacts appear only when it completes)."}


def _succeeded(job: JobRecord) -> list[dict[str, Any]]:
    if job.status != "succeeded" or job.artifacts is None:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            detail={
                "type": "JobNotSucceeded",
                "message": f"job {job.id} is {job.status}; artifacts appear when it succeeds",
            },
        )
    return job.artifacts


@router.get("/{job_id}/artifacts")
async def list_artifacts(job: JobDep) -> ArtifactList:
    """Name, size and sha256 of every file of the checkpoint (empty until the job succeeded)."""
    items = [
        ArtifactPublic(**a, url=f"{API_PREFIX}/jobs/{job.id}/artifacts/{a['name']}")
        for a in (job.artifacts if job.status == "succeeded" and job.artifacts else [])
    ]
    return ArtifactList(job_id=job.id, status=JobStatus(job.status), items=items)


@router.get(
    "/{job_id}/artifacts/{name:path}",
    response_class=FileResponse,
    responses={
        200: _FILE,
        206: _FILE,
        404: {"description": "No such artifact."},
        409: _NOT_READY,
        416: {},
    },
)
def download_artifact(job: JobDep, name: str, settings: SettingsDep) -> FileResponse:
    """One file; send `Range: bytes=START-END` for part of it."""
    artifacts = _succeeded(job)
    path = artifact_path(settings, job.id, artifacts, name)
    if path is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            detail={"type": "NotFound", "message": f"no artifact {name!r}"},
        )
    return FileResponse(path, filename=PurePosixPath(name).name)


@router.get(
    "/{job_id}/archive",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/x-tar": {}}, "description": "tar of the checkpoint"},
        409: _NOT_READY,
    },
)
def download_archive(job: JobDep, settings: SettingsDep) -> FileResponse:
    """The whole checkpoint as one uncompressed tar (flat member names; Range works here too)."""
    path = archive(settings, job.id, _succeeded(job))
    return FileResponse(path, media_type="application/x-tar", filename=f"moecarve-{job.id}.tar")


@router.get("/{job_id}/stats", responses={409: _NOT_READY})
def job_stats(job: JobDep, settings: SettingsDep) -> dict[str, Any]:
    """The checkpoint's routing_stats.json: per-layer expert load, entropy, recall, reconstruction error."""
    _succeeded(job)
    return json.loads((checkpoint_dir(settings, job.id) / "routing_stats.json").read_text())  # type: ignore[no-any-return]
