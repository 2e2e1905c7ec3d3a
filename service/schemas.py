"""HTTP request and response models. The request body reuses the library's ``Recipe`` as is."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from moecarve.recipe import Recipe
from service.records import JobRecord

API_PREFIX = "/v1"


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelling = "cancelling"
    cancelled = "cancelled"


class JobCreate(BaseModel):
    """A conversion job: the recipe (model source, layout, calibration source, ...) and a label."""

    model_config = ConfigDict(extra="forbid")

    recipe: Recipe = Field(
        ..., description="The carve recipe, the same schema as the YAML file and `moecarve.carve`."
    )
    label: str | None = Field(None, max_length=200, description="Free text shown in job lists.")


class Progress(BaseModel):
    stage: str | None = Field(
        None,
        description="load | calibrate | evaluate-dense | teacher | carve | recover | evaluate | export",
    )
    step: int = 0
    total: int = 0
    fraction: float = Field(0.0, description="step / total within the current stage.")
    message: str | None = None


class JobError(BaseModel):
    type: str = Field(
        ..., description="Error class, e.g. CalibrationError, ModelSourceError, WorkerLost."
    )
    message: str


class PlanSummary(BaseModel):
    """What the carve will produce, planned from the model config before the job was queued."""

    model_type: str
    num_layers: int
    layout: str
    active_ffn_fraction: float
    active_params: int
    total_params: int
    summary: str


class JobLinks(BaseModel):
    self: str
    events: str
    artifacts: str
    archive: str
    stats: str
    cancel: str


class JobPublic(BaseModel):
    id: str
    status: JobStatus
    label: str | None = None
    progress: Progress
    error: JobError | None = None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    plan: PlanSummary
    recipe: Recipe = Field(
        ..., description="The recipe as checked: local sources are resolved real paths."
    )
    links: JobLinks

    @classmethod
    def from_record(cls, job: JobRecord) -> JobPublic:
        base = f"{API_PREFIX}/jobs/{job.id}"
        return cls(
            id=job.id,
            status=JobStatus(job.status),
            label=job.label,
            progress=Progress(
                stage=job.stage,
                step=job.step,
                total=job.total,
                fraction=job.step / job.total if job.total else 0.0,
                message=job.message,
            ),
            error=JobError(type=job.error_type, message=job.error_message or "")
            if job.error_type
            else None,
            created_at=_ts(job.created_at),
            updated_at=_ts(job.updated_at),
            started_at=_ts(job.started_at),
            finished_at=_ts(job.finished_at),
            plan=PlanSummary.model_validate(job.plan),
            recipe=Recipe.model_validate(job.recipe),
            links=JobLinks(
                self=base,
                events=f"{base}/events",
                artifacts=f"{base}/artifacts",
                archive=f"{base}/archive",
                stats=f"{base}/stats",
                cancel=f"{base}/cancel",
            ),
        )


class JobList(BaseModel):
    items: list[JobPublic]
    next_cursor: str | None = Field(
        None, description="Pass as `cursor` to get the next (older) page."
    )


class ArtifactPublic(BaseModel):
    name: str
    size: int
    sha256: str
    url: str


class ArtifactList(BaseModel):
    job_id: str
    status: JobStatus
    items: list[ArtifactPublic] = Field(..., description="Empty until the job has succeeded.")


class Health(BaseModel):
    status: str
    version: str


def plan_summary(plan: Any) -> dict[str, Any]:
    """The stored summary of a ``moecarve.plan.Plan``."""
    return PlanSummary(
        model_type=plan.model_type,
        num_layers=plan.num_layers,
        layout=plan.layout,
        active_ffn_fraction=plan.active_ffn_fraction,
        active_params=plan.active_params,
        total_params=plan.total_params,
        summary=plan.summary(),
    ).model_dump()


def _ts(value: float | None) -> Any:
    return None if value is None else datetime.fromtimestamp(value, tz=UTC)
