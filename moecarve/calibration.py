"""Calibration and evaluation text: local files, directories, or the embedded corpora.

Window rule (DESIGN.md §5): tokenize the whole text without special tokens, split it into aligned
``max_seq_length`` chunks, ``torch.manual_seed(seed)``, take ``torch.randperm(n_chunks)[:n]``.
"""

from __future__ import annotations

import gzip
import importlib.resources
import json
import logging
from pathlib import Path
from typing import Any

from moecarve.errors import CalibrationError

log = logging.getLogger(__name__)

TEXT_SUFFIXES = {".txt", ".md", ".text"}
SUPPORTED_SUFFIXES = TEXT_SUFFIXES | {".jsonl", ".parquet"}
EMBEDDED = {
    "mixed": "mixed_calibration.txt.gz",
    "austen": "austen_calibration.txt.gz",
    "heldout": "austen_heldout.txt.gz",
}
DEFAULT_CALIBRATION = "austen"


def embedded_text(which: str) -> str:
    """An embedded corpus: 'austen' (= 'calibration', the default: the Austen protocol's four
    calibration novels), 'mixed' (those + Python docs + Python source) or 'heldout'
    (Persuasion + Northanger Abbey, never used for calibration)."""
    name = DEFAULT_CALIBRATION if which == "calibration" else which
    data = importlib.resources.files("moecarve.data").joinpath(EMBEDDED[name]).read_bytes()
    return gzip.decompress(data).decode("utf-8")


def _read_jsonl(path: Path, column: str) -> list[str]:
    texts = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise CalibrationError(f"{path}:{n}: not valid JSON ({e.msg})") from e
        if not isinstance(row, dict) or column not in row:
            raise CalibrationError(
                f"{path}:{n}: expected an object with a {column!r} field (set text_column)"
            )
        texts.append(str(row[column]))
    return texts


def _read_parquet(path: Path, column: str) -> list[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise CalibrationError(
            f"{path}: reading .parquet needs pyarrow (pip install pyarrow)"
        ) from e
    table = pq.read_table(path)
    if column not in table.column_names:
        raise CalibrationError(
            f"{path}: no column {column!r}; columns: {table.column_names} (set text_column)"
        )
    return [str(t) for t in table.column(column).to_pylist() if t is not None]


def _read_file(path: Path, column: str) -> list[str]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            return _read_jsonl(path, column)
        if suffix == ".parquet":
            return _read_parquet(path, column)
        return [path.read_text(encoding="utf-8")]
    except UnicodeDecodeError as e:
        raise CalibrationError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    except OSError as e:
        raise CalibrationError(f"cannot read {path}: {e.strerror or e}") from e


def _expand(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(
            p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES
        )
        if not files:
            raise CalibrationError(f"directory {path} holds no {sorted(SUPPORTED_SUFFIXES)} files")
        return files
    if not path.exists():
        raise CalibrationError(f"text file {path} does not exist")
    return [path]


def read_text(
    path: str | list[str] | None, text_column: str = "text", default: str = "calibration"
) -> str:
    """Read and join (with a blank line) every text of ``path``; the embedded corpus when None."""
    if path is None:
        return embedded_text(default)
    paths = [path] if isinstance(path, str) else list(path)
    if not paths:
        raise CalibrationError("no text files given")
    texts: list[str] = []
    for p in paths:
        for f in _expand(Path(p).expanduser()):
            texts.extend(_read_file(f, text_column))
    text = "\n\n".join(texts)
    if not text.strip():
        raise CalibrationError(f"text source {paths} is empty")
    return text


def tokenize(tokenizer: Any, text: str) -> Any:
    """1-D LongTensor of token ids, no special tokens."""
    import torch

    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def windows(
    ids: Any, length: int, num: int | None = None, shuffle: bool = False, seed: int = 0
) -> Any:
    """(num, length) aligned windows of ``ids``; random ones by the §5 rule when ``shuffle``.

    Text shorter than one window gives one shorter window (with a warning), never an error,
    unless it has fewer than 2 tokens.
    """
    import torch

    n_chunks = ids.numel() // length
    if n_chunks == 0:
        if ids.numel() < 2:
            raise CalibrationError(f"text has {ids.numel()} tokens; need at least 2")
        log.warning(
            "text has only %d tokens (< one window of %d): using one short window",
            ids.numel(),
            length,
        )
        return ids.view(1, -1)
    chunks = ids[: n_chunks * length].view(n_chunks, length)
    if shuffle:
        torch.manual_seed(seed)
        order = torch.randperm(n_chunks)
    else:
        order = torch.arange(n_chunks)
    if num is not None:
        if num > n_chunks:
            log.warning(
                "asked for %d windows of %d tokens; the text has only %d", num, length, n_chunks
            )
        order = order[:num]
    return chunks[order]
