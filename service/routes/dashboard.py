"""Expert-activation dashboards: one page per finished job, an index of the caller's jobs, and the
Plotly bundle served locally (users may be offline; no CDN). Rendering is torch-free.

Browsers cannot attach a bearer header to a link, so these pages also accept the API key as a
``key`` query parameter (a key in a URL can end up in browser history and proxy logs: prefer the
header, or open mode behind your own proxy).
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.security import HTTPAuthorizationCredentials

from moecarve.errors import CheckpointError
from moecarve.report import plotly_bundle_path, render_dashboard, render_index
from service.artifacts import checkpoint_dir
from service.deps import SettingsDep, StoreDep, _bearer, authenticate
from service.schemas import API_PREFIX, JobPublic

router = APIRouter(tags=["dashboard"])
PLOTLY_URL = "/static/plotly.min.js"


async def page_owner(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    key: Annotated[str | None, Query(description="API key, for links opened in a browser.")] = None,
) -> str:
    if credentials is None and key:
        credentials = HTTPAuthorizationCredentials(scheme="Bearer", credentials=key)
    return await authenticate(request, credentials)


PageOwnerDep = Annotated[str, Depends(page_owner)]


def _with_key(url: str, key: str | None) -> str:
    return f"{url}?key={quote(key)}" if key else url


@router.get(f"{API_PREFIX}/jobs/{{job_id}}/dashboard", response_class=HTMLResponse)
def job_dashboard(
    job_id: str, owner: PageOwnerDep, store: StoreDep, settings: SettingsDep
) -> HTMLResponse:
    """The job's dashboard (HTML); 409 until the job has succeeded."""
    job = store.get(job_id, owner)
    if job is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, detail={"type": "NotFound", "message": f"no job {job_id!r}"}
        )
    if job.status != "succeeded":
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            detail={
                "type": "JobNotSucceeded",
                "message": f"job {job.id} is {job.status}; its dashboard appears when it succeeds",
            },
        )
    try:
        return HTMLResponse(
            render_dashboard(checkpoint_dir(settings, job.id), plotly_src=PLOTLY_URL)
        )
    except CheckpointError as e:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, detail={"type": e.type, "message": str(e)}
        ) from e


@router.get(f"{API_PREFIX}/dashboard", response_class=HTMLResponse)
def dashboard_index(owner: PageOwnerDep, store: StoreDep, key: str | None = None) -> HTMLResponse:
    """The caller's jobs with status and links to their dashboards."""
    jobs = [JobPublic.from_record(j).model_dump(mode="json") for j in store.jobs(owner, [], 200)]
    return HTMLResponse(
        render_index(
            jobs,
            dashboard_url=_with_key(API_PREFIX + "/jobs/{id}/dashboard", key),
            job_url=API_PREFIX + "/jobs/{id}",
        )
    )


@router.get(PLOTLY_URL, include_in_schema=False)
def plotly_js() -> FileResponse:
    return FileResponse(
        plotly_bundle_path(),
        media_type="application/javascript",
        headers={"Cache-Control": "public, max-age=86400"},
    )
