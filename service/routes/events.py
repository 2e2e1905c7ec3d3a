"""Server-sent events of a job: status changes, progress and log lines, resumable by event id."""

from __future__ import annotations

from collections.abc import AsyncIterable
from datetime import UTC, datetime
from typing import Annotated

import anyio
from fastapi import APIRouter, Header, Query
from fastapi.sse import EventSourceResponse, ServerSentEvent

from service.deps import JobDep, StoreDep
from service.records import TERMINAL
from service.schemas import API_PREFIX

router = APIRouter(prefix=f"{API_PREFIX}/jobs", tags=["events"])

POLL_S = 0.25


@router.get("/{job_id}/events", response_class=EventSourceResponse)
async def job_events(
    job: JobDep,
    store: StoreDep,
    last_event_id: Annotated[int | None, Header(description="Resume after this event id.")] = None,
    after: Annotated[
        int | None,
        Query(
            ge=0, description="Resume after this event id (for clients that cannot set headers)."
        ),
    ] = None,
) -> AsyncIterable[ServerSentEvent]:
    """`event:` is `status`, `progress` or `log`; `id:` increases by one per job; `data:` is JSON.

    The stream ends after the job's terminal status event.
    """
    cursor = last_event_id if last_event_id is not None else (after or 0)
    while True:
        # Read the status before the events: a terminal status is written in the same
        # transaction as its event, so the batch read after it holds that event.
        current = store.status(job.id)
        batch = store.events(job.id, cursor)
        for ev in batch:
            at = datetime.fromtimestamp(ev.at, tz=UTC).isoformat()
            yield ServerSentEvent(event=ev.kind, id=str(ev.seq), data={**ev.data, "at": at})
            cursor = ev.seq
        if not batch:
            if current is None or current in TERMINAL:
                return
            await anyio.sleep(POLL_S)
