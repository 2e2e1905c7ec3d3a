"""Render a checkpoint's dashboard as one HTML page (no torch; the service's API process calls this).

With ``plotly_src=None`` the Plotly bundle from the ``plotly`` wheel is inlined, so the file opens
from disk with no network; with a URL the page loads the bundle from there (the service serves the
same file locally: see ``plotly_bundle_path``).
"""

from __future__ import annotations

import html
import importlib.resources
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

from moecarve import __version__
from moecarve.errors import MoecarveError
from moecarve.report.payload import build_payload

_MARKER = re.compile(r"\{\{ (\w+) \}\}")
SCRIPTS = ("dashboard.js", "layer.js")


class DashboardError(MoecarveError):
    """The dashboard cannot be rendered (e.g. the plotly package is missing)."""


def asset(name: str) -> str:
    return (
        importlib.resources.files("moecarve.report")
        .joinpath("assets", name)
        .read_text(encoding="utf-8")
    )


def plotly_bundle_path() -> Path:
    """``plotly.min.js`` inside the installed ``plotly`` wheel (found without importing plotly)."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        raise DashboardError(
            "dashboards need the plotly package for its JavaScript bundle: pip install 'plotly>=5.20'"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise DashboardError(
            f"the plotly package has no bundled plotly.min.js at {path}; reinstall plotly"
        )
    return path


_SCRIPT_END = re.compile(r"<(/?script|!--)", re.IGNORECASE)


def _script_safe(text: str) -> str:
    """JavaScript that cannot end (or escape-nest) its <script> element: ``</script`` → ``<\\/script``.

    Only these sequences are touched (each is rare and, in JavaScript, only valid inside string
    literals, where the backslash is harmless); a blanket ``</`` rewrite could break regex literals.
    """
    return _SCRIPT_END.sub(
        lambda m: "<\\" + m.group(1) if m.group(1).startswith("/") else "<\\x21--", text
    )


def fill(template: str, parts: dict[str, str]) -> str:
    """Replace ``{{ name }}`` markers in one pass (inserted text is never scanned again)."""
    return _MARKER.sub(lambda m: parts[m.group(1)], template)


def page_data(payload: dict[str, Any]) -> str:
    # JSON inside <script type="application/json">: escaping "<" keeps "</script>" and "<!--" inert.
    return json.dumps(payload, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")


def plotly_tag(plotly_src: str | None) -> str:
    if plotly_src is None:
        return f"<script>{_script_safe(plotly_bundle_path().read_text(encoding='utf-8'))}</script>"
    return f'<script src="{html.escape(plotly_src, quote=True)}"></script>'


def render_payload(payload: dict[str, Any], *, plotly_src: str | None = None) -> str:
    s = payload["summary"]
    return fill(
        asset("dashboard.html"),
        {
            "version": __version__,
            "title": html.escape(f"moecarve · {s['layout']} · {s['base_model']}"),
            "css": asset("dashboard.css"),
            "plotly": plotly_tag(plotly_src),
            "data": page_data(payload),
            "js": _script_safe("\n".join(asset(name) for name in SCRIPTS)),
        },
    )


def render_dashboard(
    checkpoint_dir: str | Path,
    *,
    plotly_src: str | None = None,
    token_routes: dict[str, Any] | None = None,
) -> str:
    """The expert-activation dashboard of a carved checkpoint, as a complete HTML page.

    Args:
        checkpoint_dir: a finished carve's output directory (reads ``plan.json``,
            ``routing_stats.json`` and, when present, ``evaluation.json``, ``neuron_stats.json``,
            ``token_routes.json``, ``recipe.yaml``, ``moecarve.json``).
        plotly_src: URL of ``plotly.min.js`` (e.g. ``/static/plotly.min.js``); None inlines it
            (≈ 4.8 MB) so the page is self-contained.
        token_routes: routes to show instead of the checkpoint's ``token_routes.json`` (see
            ``moecarve.report.tokens.routes_for_text``).

    Raises:
        CheckpointError: required side files are missing or unreadable.
        DashboardError: plotly is not installed (only when inlining).
    """
    return render_payload(build_payload(checkpoint_dir, token_routes), plotly_src=plotly_src)
