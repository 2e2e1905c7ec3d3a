"""Liveness probe (no authentication)."""

from __future__ import annotations

from fastapi import APIRouter

from moecarve import __version__
from service.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def health() -> Health:
    return Health(status="ok", version=__version__)
