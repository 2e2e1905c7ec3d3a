"""Expert-activation dashboards of carved checkpoints (DESIGN.md §7, issue 6).

Rendering never imports torch, so the service's API process can call it:

- ``render_dashboard(checkpoint_dir, plotly_src=None)`` → one HTML page (Plotly inlined when
  ``plotly_src`` is None, else loaded from that URL);
- ``render_index(jobs)`` → an HTML page listing jobs with status and links;
- ``plotly_bundle_path()`` → the ``plotly.min.js`` file to serve for ``plotly_src``.

``moecarve.report.tokens`` (torch) records per-token routes into ``token_routes.json``.
"""

from __future__ import annotations

from moecarve.report.index import render_index
from moecarve.report.payload import build_payload
from moecarve.report.render import DashboardError, plotly_bundle_path, render_dashboard

__all__ = [
    "DashboardError",
    "build_payload",
    "plotly_bundle_path",
    "render_dashboard",
    "render_index",
]
