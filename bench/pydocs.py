"""A second held-out domain without a download: Python standard-library docs rendered by pydoc.

The text depends only on the local Python version (the modules below are stdlib and stable), so
two runs on one machine score the same tokens.
"""

from __future__ import annotations

import importlib
import pydoc
import re

MODULES = (
    "json", "collections", "functools", "itertools", "pathlib", "argparse", "textwrap", "csv",
    "heapq", "bisect", "statistics", "fractions", "difflib", "shutil", "tempfile", "glob",
    "fnmatch", "string", "enum", "contextlib", "dataclasses", "copy", "pprint", "queue",
)


def python_docs_text() -> str:
    """Plain-text pydoc pages of ``MODULES`` joined with a blank line."""
    pages = [pydoc.render_doc(importlib.import_module(m), renderer=pydoc.plaintext) for m in MODULES]
    # reprs of default values carry memory addresses ("<object at 0x7f…>"): drop them so the
    # text, and hence the scored tokens, are identical from one process to the next
    return re.sub(r" at 0x[0-9a-f]+", "", "\n\n".join(pages))
