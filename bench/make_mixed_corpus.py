"""Build ``moecarve/data/mixed_calibration.txt.gz``, the default embedded calibration corpus.

Three domains joined with a blank line, in this order: the Austen protocol's four calibration novels
(English prose), pydoc pages of ``bench.pydocs.CALIBRATION_MODULES`` (technical documentation) and
those modules' Python source (code). The modules are disjoint from the held-out pydoc modules of
``bench/quality.py``. Token shares for SmolLM2's tokenizer: about half prose, a quarter each docs
and code, so the §5 window rule draws windows from all three. Run once with the repository's
Python (3.11) and commit the result; the text is Python-version dependent, the file is not.

    PYTHONPATH=. python bench/make_mixed_corpus.py
"""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.pydocs import python_docs_calibration_text, python_source_calibration_text  # noqa: E402
from moecarve.calibration import embedded_text  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "moecarve" / "data" / "mixed_calibration.txt.gz"


def main() -> None:
    text = "\n\n".join([embedded_text("austen"), python_docs_calibration_text(), python_source_calibration_text()])
    OUT.write_bytes(gzip.compress(text.encode("utf-8"), compresslevel=9, mtime=0))
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB, {len(text):,} characters)")


if __name__ == "__main__":
    main()
