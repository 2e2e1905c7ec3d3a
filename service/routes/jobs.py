"""Create, read, list, cancel and delete jobs."""

from __future__ import annotations

import hashlib
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query, Response, status
from fastapi.exceptions import RequestValidationError

from service.artifacts import remove_job_files
from service.deps import JobDep, OwnerDep, SettingsDep, StoreDep
from service.planning import plan_job
from service.schemas import API_PREFIX, JobCreate, JobList, JobPublic, JobStatus
from service.store import KeyInFlight, KeyReused

router = APIRouter(prefix=f"{API_PREFIX}/jobs", tags=["jobs"])

IdempotencyKey = Annotated[
    str | None,
    Header(
        max_length=200,
        description="Retry-safe submission: the same key and body return the same job.",
    ),
]


def _conflict(kind: str, message: str) -> HTTPException:
    return HTTPException(status.HTTP_409_CONFLICT, detail={"type": kind, "message": message})


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    responses={409: {"description": "The Idempotency-Key belongs to a request still in flight."}},
)
def create_job(
    body: JobCreate,
    owner: OwnerDep,
    store: StoreDep,
    settings: SettingsDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> JobPublic:
    """Plan the recipe against the model's config and queue the job (422 names the field at fault)."""
    request_hash = hashlib.sha256(body.model_dump_json().encode()).hexdigest()
    if idempotency_key is not None:
        try:
            existing = store.reserve_key(owner, idempotency_key, request_hash)
        except KeyInFlight:
            raise _conflict(
                "IdempotencyKeyInFlight",
                "a request with this Idempotency-Key is still being processed",
            ) from None
        except KeyReused:
            raise RequestValidationError(
                [
                    {
                        "type": "IdempotencyKeyReused",
                        "loc": ("header", "Idempotency-Key"),
                        "msg": "this Idempotency-Key was already used with a different request body",
                        "input": idempotency_key,
                    }
                ]
            ) from None
        job = None if existing is None else store.get(existing, owner)
        if job is not None:
            response.headers["Location"] = f"{API_PREFIX}/jobs/{job.id}"
            response.headers["Idempotent-Replayed"] = "true"
            return JobPublic.from_record(job)
    try:
        recipe, summary = plan_job(body.recipe, settings)
        job = store.create(
            owner=owner,
            recipe=recipe.model_dump(mode="json"),
            plan=summary,
            label=body.label,
            idempotency_key=idempotency_key,
        )
    except BaseException:
        if idempotency_key is not None:
            store.release_key(owner, idempotency_key)
        raise
    response.headers["Location"] = f"{API_PREFIX}/jobs/{job.id}"
    return JobPublic.from_record(job)


@router.get("")
async def list_jobs(
    owner: OwnerDep,
    store: StoreDep,
    status_: Annotated[
        list[JobStatus] | None, Query(alias="status", description="Only jobs in these states.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[
        int | None, Query(ge=1, description="`next_cursor` of the previous page.")
    ] = None,
) -> JobList:
    """The caller's jobs, newest first."""
    statuses = [s.value for s in status_ or []]
    jobs = store.jobs(owner, statuses, limit + 1, before=cursor)
    page = jobs[:limit]
    more = len(jobs) > limit
    return JobList(
        items=[JobPublic.from_record(j) for j in page],
        next_cursor=str(page[-1].seq) if more else None,
    )


@router.get("/{job_id}")
async def get_job(job: JobDep) -> JobPublic:
    return JobPublic.from_record(job)


@router.post("/{job_id}/cancel", responses={409: {"description": "The job has already finished."}})
def cancel_job(job: JobDep, owner: OwnerDep, store: StoreDep, response: Response) -> JobPublic:
    """A queued job is cancelled at once (200); a running one stops between layers (202, `cancelling`)."""
    if job.terminal:
        raise _conflict("JobFinished", f"job {job.id} already {job.status}")
    updated = store.request_cancel(job.id, owner) or job
    response.status_code = (
        status.HTTP_202_ACCEPTED if updated.status == "cancelling" else status.HTTP_200_OK
    )
    return JobPublic.from_record(updated)


@router.delete(
    "/{job_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={409: {"description": "The job has not finished (cancel it first)."}},
)
def delete_job(job: JobDep, owner: OwnerDep, store: StoreDep, settings: SettingsDep) -> None:
    """Delete a finished job and its artifacts."""
    if not job.terminal or not store.delete(job.id, owner):
        raise _conflict(
            "JobNotFinished",
            f"job {job.id} is {job.status}; cancel it and wait until it is cancelled",
        )
    remove_job_files(settings, job.id)
