"""Command line: ``moecarve plan|carve|eval|inspect`` (+ commands registered by other packages).

Typed library errors become one-line messages on stderr and a non-zero exit code; ``--json``
prints exactly one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from moecarve.errors import MoecarveError

EXIT_ERROR = 2
# Other packages add sub-commands through a ``register(subparsers)`` function in these modules.
EXTENSIONS = ("moecarve.export.cli", "service.cli", "moecarve.report.cli")


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=1, default=str))


def _tqdm_progress() -> Callable[[Any], None]:
    from tqdm import tqdm

    bars: dict[str, Any] = {}

    def progress(event: Any) -> None:
        bar = bars.get(event.stage)
        if bar is None:
            bar = bars[event.stage] = tqdm(
                total=event.total, desc=event.stage, unit="step", leave=True
            )
        bar.total = event.total
        bar.n = event.step
        bar.set_postfix_str(event.message, refresh=True)
        if event.step >= event.total:
            bar.close()

    return progress


def cmd_plan(args: argparse.Namespace) -> int:
    from moecarve.plan import plan
    from moecarve.recipe import Recipe

    result = plan(Recipe.from_yaml(args.recipe))
    if args.json:
        _print_json(result.model_dump())
    else:
        print(result.summary())
    return 0


def cmd_carve(args: argparse.Namespace) -> int:
    from moecarve.pipeline import carve
    from moecarve.recipe import Recipe

    recipe = Recipe.from_yaml(args.recipe)
    progress = (lambda e: None) if args.quiet else _tqdm_progress()
    result = carve(recipe, args.out_dir, progress=progress, overwrite=args.overwrite)
    ev = result.evaluation
    print(f"checkpoint: {result.output_dir.resolve()}")
    print(
        f"layout: {result.plan.layout} (active FFN {result.plan.active_ffn_fraction:.1%}), carve time {result.carve_seconds:.1f} s"
    )
    if "recovery" in ev:
        from moecarve.card import recovery_summary

        print(f"recovery: {recovery_summary(ev['recovery'])}")
    if "carved" in ev:
        print(
            f"held-out perplexity: dense {ev['dense']['perplexity']:.2f}  carved {ev['carved']['perplexity']:.2f}  "
            f"(×{ev['ratio']:.2f}, {ev['carved']['tokens']} tokens)"
        )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoTokenizer

    from moecarve.evaluate import PRESETS, EvalProtocol, eval_rows, perplexity

    if args.preset:
        protocol = PRESETS[args.preset]
    else:
        protocol = EvalProtocol(
            name="custom", window=args.window, max_windows=args.windows, path=args.text
        )
    model = _load_any(args.model_dir)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    with torch.no_grad():  # scoped: the CLI also runs in-process (tests, notebooks)
        result = perplexity(model, eval_rows(tokenizer, protocol))
    result = {"model": str(args.model_dir), "protocol": protocol.name, **result}
    if args.json:
        _print_json(result)
    else:
        print(
            f"perplexity {result['perplexity']:.3f} on {result['tokens']} tokens ({result['windows']} windows)"
        )
    return 0


def _load_any(path: str) -> Any:
    """A moecarve checkpoint, or a dense model directory / packaged default."""
    from moecarve.checkpoint import load_pretrained
    from moecarve.sources import load_config, load_model

    if "moecarve" in load_config(path):
        return load_pretrained(path)
    return load_model(path)[0]


def cmd_inspect(args: argparse.Namespace) -> int:
    from moecarve.inspect import inspect_checkpoint

    info = inspect_checkpoint(Path(args.out_dir))
    if args.json:
        _print_json(info)
    else:
        print(info["text"])
    return 0


def cmd_fields(_args: argparse.Namespace) -> int:
    from moecarve.recipe_doc import fields_markdown

    print(fields_markdown())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moecarve", description="Carve dense causal LMs into MoE models."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("plan", help="check a recipe against the model config and report sizes")
    p.add_argument("recipe")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("carve", help="carve a model and write a reference checkpoint")
    p.add_argument("recipe")
    p.add_argument("out_dir")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_carve)

    p = sub.add_parser("eval", help="held-out perplexity of a checkpoint or dense model")
    p.add_argument("model_dir")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", nargs="+", help="text file(s) (.txt/.jsonl/.parquet) or directory")
    src.add_argument("--preset", choices=["austen"], help="a ready protocol (austen: DESIGN.md §5)")
    p.add_argument("--window", type=int, default=2048)
    p.add_argument("--windows", type=int, default=40, help="maximum number of windows")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("inspect", help="summarise a carved checkpoint")
    p.add_argument("out_dir")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("fields", help="print the recipe fields as a Markdown table")
    p.set_defaults(func=cmd_fields)

    for name in EXTENSIONS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name and name.startswith(e.name):
                continue  # optional extension not present
            raise
        module.register(sub)
    return parser


def _quiet_transformers() -> None:
    """Our own progress bars are enough: silence transformers' per-load bars and notices."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_transformers()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except MoecarveError as e:
        print(f"moecarve: error: {e.type}: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("moecarve: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
