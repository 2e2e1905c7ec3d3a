"""``export(checkpoint_dir, format, out_dir)``: check → load the reference → write → verify → card.

The feasibility check runs from ``config.json`` alone, before any weights load. A native export is
written to a temporary directory, loaded back with stock ``AutoModelForCausalLM.from_pretrained``
(no ``trust_remote_code``), compared with the reference model on held-out text, and only then
renamed into place with its fidelity report (``export.json``) and model card (``README.md``).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from moecarve import __version__
from moecarve.architectures import arch_for
from moecarve.checkpoint import (
    WEIGHTS,
    atomic_write_dir,
    load_pretrained,
    prepare_output_dir,
    write_json,
)
from moecarve.errors import CheckpointError, UnsupportedExportError
from moecarve.evaluate import EvalProtocol, eval_rows
from moecarve.export import targets
from moecarve.export.base import (
    DEFAULT_SCORE_SCALE,
    ExportRequest,
    ExportTarget,
    LayerLayout,
    exact_tau,
)
from moecarve.export.card import export_card
from moecarve.export.fidelity import fidelity_report
from moecarve.progress import ProgressEvent, ProgressFn, no_progress

log = logging.getLogger(__name__)

SIDE_FILES = ("recipe.yaml", "plan.json", "routing_stats.json", "neuron_stats.json", "evaluation.json", "moecarve.json")
FALLBACK_PROTOCOL = EvalProtocol(name="heldout", window=512, max_windows=4)


@dataclass
class ExportResult:
    format: str
    output_dir: Path
    metadata: dict[str, Any]  # what export.json holds (fidelity report under "fidelity")


def read_checkpoint_config(path: Path) -> tuple[dict[str, Any], list[LayerLayout]]:
    """(source config without the moecarve section, per-layer layouts) of a reference checkpoint."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not a moecarve checkpoint: cannot read config.json ({e})") from e
    section = config.pop("moecarve", None)
    if not isinstance(section, dict) or not (path / WEIGHTS).is_file():
        raise CheckpointError(
            f"{path} is not a moecarve reference checkpoint (needs config.json with a moecarve section and {WEIGHTS}); "
            "export takes the output directory of `moecarve carve`"
        )
    specs = section.get("layers", {})
    layers = []
    for i in range(arch_for(config).num_layers(config)):
        s = specs.get(str(i))
        layers.append(
            LayerLayout(layer=i, dense=True)
            if s is None
            else LayerLayout(i, False, s["num_experts"], s["num_experts_per_tok"], s["expert_size"], s["shared_size"])
        )
    return config, layers


def recipe_protocol(path: Path) -> EvalProtocol:
    """The held-out evaluation of the carve's own recipe (or a small default on the embedded text)."""
    if not (path / "recipe.yaml").is_file():
        return FALLBACK_PROTOCOL
    from moecarve.recipe import Recipe

    recipe = Recipe.from_yaml(path / "recipe.yaml")
    ev = recipe.evaluation
    return EvalProtocol("recipe", ev.window or recipe.calibration.max_seq_length, ev.max_windows, ev.path, ev.text_column)


def stored_dtype(path: Path) -> str:
    from safetensors import safe_open

    with safe_open(str(path / WEIGHTS), "pt") as f:
        for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
            t = f.get_slice(name)
            if t.get_dtype() in ("F32", "BF16", "F16"):
                return {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}[t.get_dtype()]
    return "float32"


def get_target(fmt: str) -> ExportTarget:
    try:
        return targets.get(fmt)
    except KeyError as e:
        raise UnsupportedExportError(str(e.args[0])) from e


def export(
    checkpoint_dir: str | Path,
    format: str,
    out_dir: str | Path,
    *,
    score_scale: float = DEFAULT_SCORE_SCALE,
    tau: float | None = None,
    protocol: EvalProtocol | None = None,
    verify: bool = True,
    overwrite: bool = False,
    progress: ProgressFn = no_progress,
) -> ExportResult:
    """Export a reference checkpoint to ``format`` in ``out_dir``.

    Args:
        checkpoint_dir: output directory of ``carve`` (reference format).
        format: a name in ``moecarve.export.targets`` (``glm4_moe``, ``qwen2_moe``, ``reference``).
        out_dir: where to write; must be empty or absent unless ``overwrite``.
        score_scale: per layer, τ makes the flattened router scores τ·s have this standard deviation
            (measured on one calibration window; see ``moecarve.export.temperature``).
        tau: one fixed τ for every layer instead (rounded to a power of two).
        protocol: held-out text for the fidelity report; the carve's own evaluation settings by default.
        verify: load the export with stock transformers and measure fidelity (native formats).
        overwrite: replace a non-empty ``out_dir``.
        progress: callback receiving ``ProgressEvent``s.

    Raises:
        UnsupportedExportError: the format cannot hold this checkpoint exactly (says why and what to do).
        CheckpointError: the input is not a reference checkpoint, or the export does not load back.
    """
    src, out = Path(checkpoint_dir), Path(out_dir)
    target = get_target(format)
    if not 0 < (tau if tau is not None else score_scale) <= 1:
        raise UnsupportedExportError(f"tau and score_scale must be in (0, 1], got tau={tau}, score_scale={score_scale}")
    config, layers = read_checkpoint_config(src)
    target.check(config, layers)  # from config.json alone, before any weights load
    prepare_output_dir(out, overwrite)
    request = ExportRequest(checkpoint_dir=src, config=config, layers=layers)
    metadata: dict[str, Any] = {
        "format": format,
        "source_checkpoint": str(src.resolve()),
        "moecarve_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if not target.native:
        atomic_write_dir(out, lambda tmp: _write_reference(target, request, tmp, metadata), overwrite)
        return ExportResult(format, out, metadata)

    stage = f"export {format}"
    progress(ProgressEvent(stage, 0, 3, f"loading {src}"))
    _load_reference(request)
    target.check(config, layers, selection_bias=_selects_with_bias(request))
    temperature = _temperatures(request, score_scale, tau)
    protocol = (protocol or recipe_protocol(src)) if verify else None
    rows = eval_rows(request.tokenizer, protocol) if protocol is not None else None

    def write(tmp: Path) -> None:
        progress(ProgressEvent(stage, 1, 3, f"writing {format}"))
        conversion = target.write(request, tmp)
        request.tokenizer.save_pretrained(tmp)
        for name in SIDE_FILES:
            if (src / name).is_file():
                shutil.copy2(src / name, tmp / name)
        progress(ProgressEvent(stage, 2, 3, "loading back with stock transformers"))
        metadata["conversion"] = {**conversion, "temperature": temperature}
        metadata.update(_verify(request, tmp, rows, progress, f"fidelity {format}"))
        write_json(tmp / "export.json", metadata)
        (tmp / "README.md").write_text(export_card(src, target, metadata))

    atomic_write_dir(out, write, overwrite)
    progress(ProgressEvent(stage, 3, 3, f"wrote {out}"))
    return ExportResult(format, out, metadata)


def _load_reference(request: ExportRequest) -> None:
    from transformers import AutoTokenizer

    request.model = load_pretrained(request.checkpoint_dir)
    request.tokenizer = AutoTokenizer.from_pretrained(request.checkpoint_dir)
    request.dtype = stored_dtype(request.checkpoint_dir)


def _selects_with_bias(request: ExportRequest) -> bool:
    """Whether any layer selects with an offset (load-balancing bias or a router bias)."""
    for block in request.blocks().values():
        bias = getattr(block.router, "bias", None)
        if block.selection_bias.abs().max() > 0 or (bias is not None and bias.abs().max() > 0):
            return True
    return False


def _temperatures(request: ExportRequest, score_scale: float, tau: float | None) -> dict[str, Any]:
    """Set ``request.taus``; return how they were chosen (for export.json)."""
    blocks = request.blocks()
    if tau is not None:
        request.taus = {i: exact_tau(tau) for i in blocks}
        return {"tau_fixed": tau}
    from moecarve.export.temperature import calibration_window, layer_taus, router_score_std

    rows = calibration_window(request.checkpoint_dir, request.tokenizer, request.config.get("max_position_embeddings"))
    stds = router_score_std(request.model, blocks, rows)
    request.taus = layer_taus(stds, score_scale)
    return {"score_scale": score_scale, "router_score_std": {str(i): s for i, s in stds.items()}, "tokens": rows.numel()}


def _write_reference(target: ExportTarget, request: ExportRequest, tmp: Path, meta: dict[str, Any]) -> None:
    meta["conversion"] = target.write(request, tmp)
    write_json(tmp / "export.json", meta)


def _verify(
    request: ExportRequest, tmp: Path, rows: torch.Tensor | None, progress: ProgressFn, stage: str
) -> dict[str, Any]:
    """Load the export with stock transformers; compare it with the reference on ``rows``."""
    if rows is None:
        return {"fidelity": None}
    from transformers import AutoModelForCausalLM

    start = time.perf_counter()
    exported, info = AutoModelForCausalLM.from_pretrained(
        tmp, dtype=torch.float32, trust_remote_code=False, output_loading_info=True
    )
    load_seconds = time.perf_counter() - start
    bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if bad:
        raise CheckpointError(f"the {type(exported).__name__} export does not load cleanly: {bad}")
    report = fidelity_report(request.model, request.blocks(), exported.eval(), rows, progress, stage)
    return {"loads_with": type(exported).__name__, "load_seconds": load_seconds, "fidelity": report}
