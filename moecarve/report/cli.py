"""``moecarve report MODEL_DIR --out report.html [--text FILE]``: a self-contained dashboard file."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def cmd_report(args: argparse.Namespace) -> int:
    from moecarve.report.render import render_dashboard

    routes = _routes_for_file(args.model_dir, args.text, args.max_tokens) if args.text else None
    page = render_dashboard(args.model_dir, plotly_src=args.plotly_src, token_routes=routes)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    print(f"dashboard: {out.resolve()} ({len(page.encode()) / 1e6:.1f} MB)")
    return 0


def _routes_for_file(model_dir: str, text_path: str, max_tokens: int) -> dict[str, Any]:
    """Load the carved model (torch) and record the routes of the first tokens of ``text_path``."""
    import torch
    from transformers import AutoTokenizer

    from moecarve.calibration import read_text
    from moecarve.checkpoint import load_pretrained
    from moecarve.report.tokens import routes_for_text

    model = load_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with torch.no_grad():  # scoped: the CLI also runs in-process (tests, notebooks)
        return routes_for_text(
            model, tokenizer, read_text(text_path), max_tokens, source=Path(text_path).name
        )


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "report", help="write a carved checkpoint's expert-activation dashboard as one HTML file"
    )
    p.add_argument("model_dir", help="a carved checkpoint directory")
    p.add_argument("--out", default="report.html", help="HTML file to write (default: report.html)")
    p.add_argument(
        "--text",
        help="show the routes of this text (.txt/.jsonl/.parquet) instead of the carve's sample; loads the model",
    )
    p.add_argument(
        "--max-tokens", type=int, default=320, help="tokens of --text to route (default: 320)"
    )
    p.add_argument(
        "--plotly-src",
        default=None,
        help="URL of plotly.min.js to load instead of inlining it (the file then needs that URL)",
    )
    p.set_defaults(func=cmd_report)
