"""Paired held-out perplexity of recipe variants: one model load, the same calibration and
held-out windows for every variant, carved one after another in one process.

    PYTHONPATH=. python bench/experiments/paired_ppl.py WINDOWS OUT.json FRAGMENT [FRAGMENT ...]

Each FRAGMENT is a recipe fragment as JSON (e.g. '{"moe": {"active_fraction": 0.25}}'); prints
one line per variant: carve seconds, held-out PPL, held-out load CV (mean over layers), mean
calibration reconstruction error. Used for quick A/B checks on fewer windows than bench/quality.py.
"""

from __future__ import annotations

import json
import sys

from bench.harness import Bench
from moecarve.calibration import read_text


def main() -> None:
    windows, out, fragments = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
    bench = Bench()
    bench.add_eval("austen", read_text(None, default="heldout"), windows)
    print("dense", bench.dense("austen")["perplexity"], flush=True)
    results = {}
    for fragment in fragments:
        r = bench.carve(json.loads(fragment), ["austen"])
        results[fragment] = r
        print(fragment, r["carve_seconds"], round(r["austen"]["perplexity"], 3), round(r["austen"]["load_cv"], 3),
              round(r["calib_recon_error_mean"], 4), flush=True)
        with open(out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
