"""``moecarve export MODEL_DIR --format {glm4_moe,qwen2_moe,reference} OUT_DIR`` (registered by moecarve.cli)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from moecarve.export import targets
from moecarve.export.base import DEFAULT_SCORE_SCALE


def cmd_export(args: argparse.Namespace) -> int:
    from moecarve.evaluate import EvalProtocol
    from moecarve.export.run import export, recipe_protocol

    protocol = None
    if args.text or args.window or args.windows:
        base = recipe_protocol(Path(args.model_dir))
        protocol = EvalProtocol(
            name="custom" if args.text else base.name,
            window=args.window or base.window,
            max_windows=args.windows or base.max_windows,
            path=args.text or base.path,
            text_column=base.text_column,
        )
    progress = (lambda e: None) if args.quiet or args.json else _progress()
    result = export(
        args.model_dir, args.format, args.out_dir, score_scale=args.score_scale, tau=args.tau, protocol=protocol,
        verify=not args.no_verify, overwrite=args.overwrite, progress=progress,
    )
    if args.json:
        print(json.dumps({"output_dir": str(result.output_dir), **result.metadata}, indent=1, default=str))
        return 0
    print(f"{args.format} export: {result.output_dir.resolve()}")
    fid = result.metadata.get("fidelity")
    if fid:
        print(
            f"loads with {result.metadata['loads_with']} in {result.metadata['load_seconds']:.1f} s; vs reference on "
            f"{fid['windows']}×{fid['window']} held-out tokens: max |Δlogit| {fid['max_abs_logit_diff']:.3g}, "
            f"mean {fid['mean_abs_logit_diff']:.3g}, selections differ {fid['selection_diff_fraction']:.3%}, "
            f"perplexity {fid['perplexity_reference']:.3f} → {fid['perplexity_export']:.3f}"
        )
    return 0


def _progress() -> Any:
    from moecarve.cli import _tqdm_progress

    return _tqdm_progress()


def register(sub: Any) -> None:
    p = sub.add_parser(
        "export",
        help="export a carved checkpoint to a native transformers MoE class (or copy the reference format)",
        description="Write MODEL_DIR (the output of `moecarve carve`) as FORMAT in OUT_DIR, load it back with "
        "stock transformers and report its fidelity against the reference model (export.json, README.md).",
    )
    p.add_argument("model_dir", help="a moecarve reference checkpoint (output of `moecarve carve`)")
    p.add_argument("--format", required=True, choices=targets.names(), help="export target")
    p.add_argument("out_dir")
    p.add_argument(
        "--score-scale", type=float, default=DEFAULT_SCORE_SCALE,
        help=f"per layer, τ makes the flattened router scores τ·s have this standard deviation (default {DEFAULT_SCORE_SCALE})",
    )
    p.add_argument("--tau", type=float, help="one fixed router temperature τ for every layer instead of --score-scale")
    p.add_argument("--text", nargs="+", help="held-out text for the fidelity report (default: the carve's evaluation text)")
    p.add_argument("--window", type=int, help="tokens per fidelity window (default: the carve's)")
    p.add_argument("--windows", type=int, help="number of fidelity windows (default: the carve's)")
    p.add_argument("--no-verify", action="store_true", help="skip loading back and the fidelity report")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the export metadata as one JSON object")
    p.set_defaults(func=cmd_export)
