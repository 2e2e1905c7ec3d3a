"""The FastAPI application. Importing this module never imports torch."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI

from moecarve import __version__
from service.routes import artifacts, dashboard, events, health, jobs
from service.settings import Settings
from service.store import JobStore

# One router per concern; a new concern (e.g. dashboards) is a module and a line here.
ROUTERS: list[APIRouter] = [
    health.router,
    jobs.router,
    events.router,
    artifacts.router,
    dashboard.router,
]

DESCRIPTION = """Convert dense causal LMs into Mixture-of-Experts checkpoints as jobs.

Submit a recipe (`POST /v1/jobs`), follow it (`GET /v1/jobs/{id}` or the `events` stream), then
download the checkpoint (`archive`, or single files with HTTP Range). Authenticate with
`Authorization: Bearer <API key>`.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API app over ``settings`` (from ``MOECARVE_*`` environment variables when omitted)."""
    settings = settings or Settings.from_env()
    settings.check_access()
    app = FastAPI(title="moecarve", version=__version__, description=DESCRIPTION)
    app.state.settings = settings
    app.state.api_keys = settings.keys()
    app.state.store = JobStore(settings.db_path)
    for router in ROUTERS:
        app.include_router(router)
    return app
