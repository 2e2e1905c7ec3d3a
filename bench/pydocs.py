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


def pydoc_pages(modules: tuple[str, ...]) -> str:
    """Plain-text pydoc pages of ``modules`` joined with a blank line."""
    pages = [pydoc.render_doc(importlib.import_module(m), renderer=pydoc.plaintext) for m in modules]
    # reprs of default values carry memory addresses ("<object at 0x7f…>"): drop them so the
    # text, and hence the scored tokens, are identical from one process to the next
    return re.sub(r" at 0x[0-9a-f]+", "", "\n\n".join(pages))


def python_docs_text() -> str:
    """The held-out pydoc text: pages of ``MODULES``."""
    return pydoc_pages(MODULES)


# Disjoint from MODULES (the held-out set): calibration text for the mixed-domain experiment.
CALIBRATION_MODULES = (
    "os", "re", "typing", "logging", "datetime", "random", "math", "subprocess", "threading",
    "inspect", "ast", "zipfile", "tarfile", "sqlite3", "decimal", "calendar", "configparser",
    "hashlib", "base64", "unittest", "urllib.parse", "http.client", "email.message", "abc",
)


def python_docs_calibration_text() -> str:
    """pydoc pages of ``CALIBRATION_MODULES`` (no module shared with the held-out ``MODULES``)."""
    return pydoc_pages(CALIBRATION_MODULES)


def python_source_calibration_text() -> str:
    """Source code of the ``CALIBRATION_MODULES`` written in Python, joined with a blank line."""
    import inspect

    modules = [importlib.import_module(m) for m in CALIBRATION_MODULES]
    return "\n\n".join(inspect.getsource(m) for m in modules if str(getattr(m, "__file__", "")).endswith(".py"))
