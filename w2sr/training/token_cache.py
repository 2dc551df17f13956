"""Tokenize once: a file's tokenized traces cached on disk, keyed by file content, tokenizer and options.

``cached(path, build, key_parts, cache_dir, barrier, is_rank_zero)`` returns the tokenized records of a traces file:
from ``<cache_dir>/<key>.npz`` when present, else built by ``build()`` and written atomically. Under several ranks
only rank 0 builds; the others wait at the barrier and then read the file, so 8 ranks do not tokenize 100k traces 8
times and a rerun starts at once. The key hashes the file's bytes (sha256), the tokenizer (class, size, special
tokens, chat template, and the bytes of its files when it is a local folder) and every option that changes the
tokens. A record is ``(input_ids, prompt_length, status)``; labels are ``-100`` on the prompt and the ids after it.
Exercised by ``pytest tests/training/test_data.py -k cache``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

CACHE_VERSION = 1
Record = tuple[list[int], int, str]  # input ids, prompt length, status ("ok" or why the trace is not trained on)


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """What identifies a tokenizer's output: class, vocabulary size, special tokens, template, local files."""
    parts: dict[str, Any] = {
        "class": type(tokenizer).__name__,
        "size": len(tokenizer),
        "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "chat_template": getattr(tokenizer, "chat_template", None),
        "name": getattr(tokenizer, "name_or_path", ""),
    }
    folder = Path(parts["name"])
    if folder.is_dir():
        parts["files"] = {
            f.name: file_sha256(f)
            for f in sorted(folder.iterdir())
            if f.is_file()
            and (
                f.name.startswith("tokenizer")
                or f.suffix in (".model", ".txt")
                or f.name in ("vocab.json", "special_tokens_map.json")
            )
        }
    return parts


def cache_key(path: str | os.PathLike, tokenizer: PreTrainedTokenizerBase, options: dict[str, Any]) -> str:
    material = {
        "version": CACHE_VERSION,
        "file": file_sha256(path),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "options": options,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:32]


def save_records(path: Path, records: list[Record]) -> None:
    lengths = np.array([len(r[0]) for r in records], dtype=np.int64)
    flat = np.fromiter((t for r in records for t in r[0]), dtype=np.int32, count=int(lengths.sum()))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(
                handle,
                ids=flat,
                lengths=lengths,
                prompt=np.array([r[1] for r in records], dtype=np.int64),
                status=np.array([r[2] for r in records], dtype=object).astype(str),
            )
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_records(path: Path) -> list[Record]:
    with np.load(path) as data:
        flat, lengths, prompt, status = data["ids"], data["lengths"], data["prompt"], data["status"]
    ends = np.cumsum(lengths)
    return [(flat[end - n : end].tolist(), int(p), str(s)) for end, n, p, s in zip(ends, lengths, prompt, status)]


def cached(
    path: str | os.PathLike,
    build: Callable[[], list[Record]],
    key: str,
    cache_dir: str | None,
    barrier: Callable[[], None] | None = None,
    is_rank_zero: bool = True,
) -> tuple[list[Record], bool]:
    """``(records, read_from_cache)``; rank 0 builds and writes, the other ranks wait and read."""
    if not cache_dir:
        return build(), False
    target = Path(os.path.expanduser(cache_dir)) / f"{key}.npz"
    hit = target.is_file()
    records: list[Record] | None = None
    if is_rank_zero and not hit:
        records = build()
        try:
            save_records(target, records)
        except OSError as err:  # an unwritable cache never stops training
            from lightning.pytorch.utilities import rank_zero_warn

            rank_zero_warn(f"w2sr: could not write the token cache {target}: {err}")
    if barrier is not None:
        barrier()
    if records is not None:
        return records, False
    if target.is_file():
        return load_records(target), True
    return build(), False
