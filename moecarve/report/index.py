"""The dashboard index page: one row per job with status, progress and links (no JavaScript)."""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

from moecarve.report.render import asset, fill

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>moecarve · dashboards</title>
<link rel="icon" href="data:,"><style>{{ css }}</style></head>
<body><header><h1>moecarve conversions</h1><div class="muted">{{ count }}</div></header>
<main style="display:block"><table class="jobs"><thead><tr><th>job</th><th>status</th><th>model</th>
<th>layout</th><th>progress</th><th>created</th><th>links</th></tr></thead><tbody>
{{ rows }}
</tbody></table></main></body></html>
"""


def _e(value: Any) -> str:
    return "" if value is None else html.escape(str(value), quote=True)


def _layout(recipe: Mapping[str, Any]) -> str:
    moe = recipe.get("moe")
    if isinstance(moe, str):
        return moe
    if isinstance(moe, Mapping):
        if moe.get("layout"):
            return str(moe["layout"])
        if moe.get("num_experts") is not None:
            s, k = moe.get("num_shared_experts") or 0, moe.get("num_experts_per_tok")
            return f"S{s}A{k}E{moe['num_experts'] + s}"
        if moe.get("active_fraction") is not None:
            return f"{moe['active_fraction']:.0%} active"
    return ""


def _progress(job: Mapping[str, Any]) -> str:
    p = job.get("progress") or {}
    if job.get("status") == "failed" and job.get("error"):
        err = job["error"]
        return _e(f"{err.get('type', 'error')}: {err.get('message', '')}")
    if p.get("fraction") is None:
        return _e(p.get("stage"))
    return _e(f"{p.get('stage') or ''} {100 * p['fraction']:.0f}%".strip())


def _row(job: Mapping[str, Any], dashboard_url: str, job_url: str) -> str:
    job_id = str(job["id"])
    status = str(job.get("status", "unknown"))
    recipe = job.get("recipe") or {}
    links = [f'<a href="{_e(job_url.format(id=job_id))}">job</a>']
    if status == "succeeded":
        links.insert(0, f'<a href="{_e(dashboard_url.format(id=job_id))}">dashboard</a>')
    return (
        f'<tr><td><code>{_e(job_id)}</code></td><td><span class="status {_e(status)}">{_e(status)}</span></td>'
        f"<td>{_e(job.get('model') or recipe.get('model'))}</td><td>{_e(job.get('layout') or _layout(recipe))}</td>"
        f"<td>{_progress(job)}</td><td>{_e(job.get('created_at') or job.get('created'))}</td>"
        f"<td>{' · '.join(links)}</td></tr>"
    )


def render_index(
    jobs: list[Mapping[str, Any]],
    *,
    dashboard_url: str = "/v1/jobs/{id}/dashboard",
    job_url: str = "/v1/jobs/{id}",
) -> str:
    """An HTML page listing ``jobs`` (dicts like the service's ``JobPublic``), newest first as given.

    Each job needs ``id``; ``status``, ``recipe`` (``model``, ``moe``), ``progress``
    (``stage``, ``fraction``), ``error`` (``type``, ``message``) and ``created_at`` are shown when
    present. Succeeded jobs link to ``dashboard_url`` (``{id}`` is replaced); every job links to
    ``job_url``. All values are HTML-escaped.
    """
    rows = "\n".join(_row(job, dashboard_url, job_url) for job in jobs)
    if not jobs:
        rows = '<tr><td colspan="7" class="muted">no jobs yet</td></tr>'
    count = f"{len(jobs)} job{'s' if len(jobs) != 1 else ''}"
    return fill(_PAGE, {"css": asset("dashboard.css"), "count": count, "rows": rows})
