"""Typed dependencies of the routes: settings, the job store, the caller's identity, a job."""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.records import JobRecord
from service.settings import Settings
from service.store import JobStore

OPEN_OWNER = "local"
_bearer = HTTPBearer(
    auto_error=False, description="An API key from the server's MOECARVE_API_KEYS."
)


# Dependencies and read-only routes are ``async``: they do no I/O but SQLite reads, which in WAL
# mode never wait for a writer, so they run on the event loop without a thread hop per request.
# Routes that write (create, cancel, delete) or touch files stay ``def`` (FastAPI's threadpool).


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


async def get_store(request: Request) -> JobStore:
    return request.app.state.store  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[JobStore, Depends(get_store)]


def owner_of(key: str) -> str:
    """Jobs are owned by a digest of the key: the database never holds the keys themselves."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


async def authenticate(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> str:
    """The caller's owner id; 401 without a valid bearer key (unless the server is in open mode)."""
    keys: list[str] = request.app.state.api_keys
    if request.app.state.settings.open_access:
        return OPEN_OWNER
    if credentials is not None and credentials.scheme.lower() == "bearer":
        given = credentials.credentials.encode()
        for key in keys:
            if hmac.compare_digest(given, key.encode()):
                return owner_of(key)
    raise HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        detail={
            "type": "Unauthorized",
            "message": "missing or invalid API key (Authorization: Bearer <key>)",
        },
        headers={"WWW-Authenticate": "Bearer"},
    )


OwnerDep = Annotated[str, Depends(authenticate)]


async def owned_job(job_id: str, owner: OwnerDep, store: StoreDep) -> JobRecord:
    """The job if it exists and belongs to the caller; 404 otherwise (never 403: no existence leak)."""
    job = store.get(job_id, owner)
    if job is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, detail={"type": "NotFound", "message": f"no job {job_id!r}"}
        )
    return job


JobDep = Annotated[JobRecord, Depends(owned_job)]
