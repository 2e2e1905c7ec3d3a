"""CPU forward-pass speed of a carved model vs its dense base (prints a table, writes JSON).

Carves SmolLM2-135M (the packaged default) at the requested layouts with a small calibration
budget (speed does not depend on quality), then times, interleaved and repeated, the dense and the
carved model on: a prefill of one window, and greedy decoding with a KV cache. Machines are noisy:
read the ratios, which are measured in the same run.

    python bench/speed.py --layouts S2A2E16 S4A4E16 --prefill 512 --decode 32 --out bench/results/speed.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

import moecarve
from moecarve.sources import load_model


def _time(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


@torch.no_grad()
def prefill(model, ids: torch.Tensor) -> None:
    model(input_ids=ids, use_cache=False)


@torch.no_grad()
def decode(model, ids: torch.Tensor, steps: int) -> None:
    model.generate(ids, max_new_tokens=steps, min_new_tokens=steps, do_sample=False, pad_token_id=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layouts", nargs="+", default=["S2A2E16", "S4A4E16"])
    parser.add_argument("--prefill", type=int, default=512, help="tokens in the prefill window")
    parser.add_argument("--decode", type=int, default=32, help="greedy decoding steps")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="bench/results/speed.json")
    args = parser.parse_args()

    dense, tokenizer = load_model("smollm2-135m")
    from moecarve.calibration import embedded_text, tokenize

    ids = tokenize(tokenizer, embedded_text("heldout"))[: args.prefill].unsqueeze(0)
    prompt = ids[:, :16]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for layout in args.layouts:
            recipe = {
                "model": "smollm2-135m",
                "moe": layout,
                "calibration": {"num_calibration_samples": 2, "max_seq_length": 512},
                "evaluation": {"enabled": False},
                "profile": {"sample_tokens": 512},
            }
            carved = moecarve.carve(recipe, Path(tmp) / layout).model
            for name, fn in (
                (f"prefill {args.prefill}", lambda m: prefill(m, ids)),
                (f"decode {args.decode}", lambda m: decode(m, prompt, args.decode)),
            ):
                fn(dense), fn(carved)  # warm-up
                d, c = [], []
                for _ in range(args.repeats):  # interleaved, so drift hits both alike
                    d += _time(lambda: fn(dense), 1)
                    c += _time(lambda: fn(carved), 1)
                dm, cm = statistics.median(d), statistics.median(c)
                rows.append({"layout": layout, "workload": name, "dense_s": dm, "carved_s": cm, "speedup": dm / cm})
    print(f"{'layout':10} {'workload':14} {'dense s':>9} {'carved s':>9} {'speedup':>8}")
    for r in rows:
        print(f"{r['layout']:10} {r['workload']:14} {r['dense_s']:9.3f} {r['carved_s']:9.3f} {r['speedup']:8.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"threads": torch.get_num_threads(), "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
