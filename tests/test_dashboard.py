"""Dashboards: payload math, page safety, token routes, the torch-free renderer and `moecarve report`."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_recipe

from moecarve.errors import CheckpointError
from moecarve.report import build_payload, plotly_bundle_path, render_dashboard, render_index
from moecarve.report.data import finite, rate_histograms, transitions
from moecarve.report.render import fill, page_data

REPO = Path(__file__).resolve().parents[1]


def carve_once(tmp_path_factory: pytest.TempPathFactory, llama_dir: Path) -> Path:
    """One tiny carved checkpoint per test session, shared by the dashboard test modules."""
    from moecarve.calibration import embedded_text
    from moecarve.pipeline import carve

    root = tmp_path_factory.getbasetemp() / "dashboard-checkpoint"
    out = root / "ckpt"
    if not (out / "routing_stats.json").is_file():
        root.mkdir(exist_ok=True)
        calib = root / "calib.txt"
        calib.write_text(embedded_text("calibration")[:40_000])
        carve(tiny_recipe(llama_dir, calib), out, overwrite=True)
    return out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, llama_dir) -> Path:
    return carve_once(tmp_path_factory, llama_dir)


# --- pure functions --------------------------------------------------------------------------
@pytest.mark.unit
def test_rate_histograms_count_every_neuron_and_mark_the_shared_cut():
    stats = {
        "0": {
            "rate": [0.0, 0.001, 0.01, 0.1, 0.5, 0.02],
            "shared": [3, 4],
            "tokens": 10,
            "marker_top_k": 2,
        },
        "1": {
            "rate": [0.2, 0.0, 0.0, 0.05, 0.3, 0.004],
            "shared": [0],
            "tokens": 10,
            "marker_top_k": 2,
        },
    }
    h = rate_histograms(stats, bins=8)
    assert len(h["edges"]) == 9
    assert h["edges"][0] == pytest.approx(math.log10(0.001)) and h["edges"][-1] == pytest.approx(
        math.log10(0.5)
    )
    for key, s in stats.items():
        layer = h["layers"][key]
        total = (
            sum(layer["shared"])
            + sum(layer["routed"])
            + layer["zero"]["shared"]
            + layer["zero"]["routed"]
        )
        assert total == len(s["rate"])
        assert sum(layer["shared"]) + layer["zero"]["shared"] == len(s["shared"])
    assert h["layers"]["0"]["cut"] == 0.1 and h["layers"]["1"]["cut"] == 0.2
    assert h["layers"]["1"]["zero"] == {"shared": 0, "routed": 2}


@pytest.mark.unit
def test_transitions_sum_to_one_and_rows_give_the_load():
    routes = {"layers": {"0": [[0, 1], [1, 2], [2, 0]], "2": [[3, 1], [0, 1], [1, 2]]}}
    t = transitions(routes, {"0": 3, "2": 4})
    assert list(t) == ["0"] and t["0"]["from"] == 0 and t["0"]["to"] == 2
    share = t["0"]["share"]
    assert len(share) == 3 and all(len(r) == 4 for r in share)
    assert sum(map(sum, share)) == pytest.approx(1.0, abs=1e-5)
    load0 = [
        sum(1 for sel in routes["layers"]["0"] if e in sel) / 6 for e in range(3)
    ]  # share of slots
    assert [sum(r) for r in share] == pytest.approx(load0, abs=1e-5)
    assert transitions(None, {}) == {} and transitions({"layers": {}}, {}) == {}


@pytest.mark.unit
def test_payload_json_is_strict_and_cannot_close_its_script_element():
    data = page_data(
        finite(
            {"name": "</script><script>alert(1)</script>", "x": [float("nan"), 1.0, float("inf")]}
        )
    )
    assert "<" not in data
    assert json.loads(data) == {
        "name": "</script><script>alert(1)</script>",
        "x": [None, 1.0, None],
    }
    assert (
        fill("a {{ x }} b {{ y }}", {"x": "{{ y }}", "y": "1"}) == "a {{ y }} b 1"
    )  # one pass only


@pytest.mark.unit
def test_index_lists_jobs_escaped_with_dashboard_links_for_finished_ones():
    jobs = [
        {"id": "j1", "status": "succeeded", "recipe": {"model": "smollm2-135m", "moe": "S2A2E16"},
         "progress": {"stage": "export", "fraction": 1.0}, "created_at": "2026-01-01T00:00:00Z"},
        {"id": "j2", "status": "failed", "recipe": {"model": "<b>x</b>", "moe": {"num_experts": 6, "num_experts_per_tok": 2}},
         "error": {"type": "RecipeError", "message": "bad <layout>"}},
        {"id": "j3", "status": "running", "progress": {"stage": "carve", "fraction": 0.5}},
    ]  # fmt: skip
    page = render_index(jobs)
    assert page.count("<tr>") == 4  # header + 3 jobs
    assert 'href="/v1/jobs/j1/dashboard"' in page
    assert "/v1/jobs/j2/dashboard" not in page and "/v1/jobs/j3/dashboard" not in page
    assert (
        'href="/v1/jobs/j2"' in page
        and "S2A2E16" in page
        and "S0A2E6" in page
        and "carve 50%" in page
    )
    assert (
        "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page and "bad &lt;layout&gt;" in page
    )
    assert "no jobs yet" in render_index([])
    assert 'href="/d/j1"' in render_index(jobs[:1], dashboard_url="/d/{id}")


@pytest.mark.unit
def test_render_refuses_a_directory_that_is_not_a_finished_carve(tmp_path):
    with pytest.raises(CheckpointError, match="plan.json"):
        render_dashboard(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        render_dashboard(tmp_path / "missing")


@pytest.mark.unit
def test_plotly_bundle_ships_in_the_wheel():
    path = plotly_bundle_path()
    assert path.name == "plotly.min.js" and path.stat().st_size > 1_000_000


# --- on a carved tiny model ------------------------------------------------------------------
@pytest.mark.integration
def test_carve_writes_token_routes_for_every_moe_layer(checkpoint):
    routes = json.loads((checkpoint / "token_routes.json").read_text())
    plan = json.loads((checkpoint / "plan.json").read_text())
    assert routes["source"] == "held-out" and len(routes["tokens"]) == len(routes["ids"]) > 0
    assert set(routes["layers"]) == {str(lp["layer"]) for lp in plan["layers"] if not lp["dense"]}
    for key, per_token in routes["layers"].items():
        lp = plan["layers"][int(key)]
        assert len(per_token) == len(routes["ids"])
        for sel in per_token:
            assert len(sel) == len(set(sel)) == lp["num_experts_per_tok"]
            assert all(0 <= e < lp["num_experts"] for e in sel)


@pytest.mark.integration
def test_token_routes_match_the_model_and_restore_recorders(checkpoint):
    import torch
    from transformers import AutoTokenizer

    from moecarve.checkpoint import load_pretrained
    from moecarve.report.tokens import moe_blocks, record_token_routes

    model, tok = load_pretrained(checkpoint), AutoTokenizer.from_pretrained(checkpoint)
    saved = json.loads((checkpoint / "token_routes.json").read_text())
    blocks = moe_blocks(model)
    sentinel = lambda *a: None  # noqa: E731
    blocks[0].recorder = sentinel
    with torch.no_grad():
        again = record_token_routes(model, tok, torch.tensor(saved["ids"]), source="held-out")
    assert again == saved  # the reloaded checkpoint routes the sample exactly as at carve time
    with torch.no_grad():
        tail = record_token_routes(model, tok, torch.tensor(saved["ids"]), keep_last=5)
    assert tail["ids"] == saved["ids"][-5:] and len(tail["tokens"]) == 5
    assert tail["layers"] == {
        k: v[-5:] for k, v in saved["layers"].items()
    }  # full context, last 5 kept
    assert blocks[0].recorder is sentinel and blocks[1].recorder is None


@pytest.mark.integration
def test_renderer_never_imports_torch(checkpoint):
    code = (
        "import sys; from moecarve.report import render_dashboard, render_index;"
        f"page = render_dashboard({str(checkpoint)!r}, plotly_src='/static/plotly.min.js');"
        "render_index([{'id': 'a', 'status': 'succeeded'}]);"
        "assert 'torch' not in sys.modules, 'torch imported'; print(len(page))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert (
        10_000 < int(done.stdout) < 1_000_000
    )  # the served page is small: Plotly comes from the URL


@pytest.mark.integration
def test_payload_covers_every_chart(checkpoint):
    p = build_payload(checkpoint)
    assert p["summary"]["layout"] == "S2A2E8" and p["summary"]["ppl_carved"] > 0
    assert set(p["sources"]) == {"heldout", "calibration"}
    for stats in p["sources"].values():
        assert set(stats) == {"0", "1"}
        assert all(
            len(s["coselection"]) == 6 and sum(s["expert_load"]) == pytest.approx(1, abs=1e-4)
            for s in stats.values()
        )
    assert set(p["histograms"]["layers"]) == {"0", "1"} and p["transitions"]["0"]["to"] == 1
    assert "moe:" in p["recipe_yaml"]


@pytest.mark.integration
def test_cli_report_is_self_contained(checkpoint, tmp_path):
    from moecarve.cli import main

    out = tmp_path / "report.html"
    assert main(["report", str(checkpoint), "--out", str(out)]) == 0
    page = out.read_text()
    assert plotly_bundle_path().read_text()[:2000] in page  # Plotly inlined
    assert "<script src=" not in page and '<link rel="stylesheet"' not in page


@pytest.mark.integration
def test_cli_report_routes_user_text(checkpoint, tmp_path):
    from moecarve.cli import main

    text = tmp_path / "mine.txt"
    text.write_text(
        "It is a truth universally acknowledged, that a single man in possession of a good fortune"
    )
    out = tmp_path / "report.html"
    assert (
        main(
            [
                "report",
                str(checkpoint),
                "--out",
                str(out),
                "--text",
                str(text),
                "--max-tokens",
                "12",
            ]
        )
        == 0
    )
    raw = (
        out.read_text()
        .split('<script id="moecarve-data" type="application/json">')[1]
        .split("</script>")[0]
    )
    tokens = json.loads(raw)["tokens"]
    assert tokens["source"] == "mine.txt" and len(tokens["ids"]) == 12
    assert "".join(tokens["tokens"]).startswith("It is a truth")
    assert main(["report", str(tmp_path / "nope"), "--out", str(out)]) == 2  # typed error → exit 2
