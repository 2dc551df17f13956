"""Crash-safe trace output: an append-only JSONL log that is flushed and fsynced every few seconds, resumable.

``w2sr generate`` streams into the output path itself while it runs (one process) or into one part file per rank
(``<output>.rank<R>of<N>.part.jsonl``, several ranks), each problem's records appended as soon as its samples are
done. A kill loses at most the last few seconds of work and can leave a torn last line, which
:func:`repair_torn_tail` cuts off when the run is resumed (``--resume true``). When every problem is done the stage
rewrites the output once, atomically, in problem order (:func:`finalize`), so a finished output looks the same
however often the run was interrupted. Exercised by ``pytest tests/generation/test_generate_resume.py`` and
``python benchmarks/generate_resume.py``.
"""

from __future__ import annotations

import glob
import json
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from w2sr.records.jsonl import InputError, atomic_open, dumps

Key = tuple[str, int]


@dataclass
class ScanResult:
    """What an existing output holds: the ``(id, sample)`` pairs done, how many records, whether the tail was torn."""

    done: set[Key] = field(default_factory=set)
    records: int = 0
    torn_bytes: int = 0


def _key(line: bytes, path: Path, number: int) -> Key:
    try:
        record = json.loads(line)
        return str(record["id"]), int(record["sample"])
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(
            f"not a trace record ({type(err).__name__}: {err}); fix or remove the file, or pass --overwrite",
            path=path,
            line=number,
        ) from None


_FIRST_ID = re.compile(rb'\{"id": "([^"\\\n]*)", ')
_NEXT_ID = re.compile(rb'\n\{"id": "([^"\\\n]*)", ')  # a literal prefix: a fast search, unlike ^ with re.M
_SAMPLE_KEY = re.compile(rb', "sample": (\d+), "teacher": ')


def _fast_keys(data: bytes, end: int) -> list[Key] | None:
    """All pairs of a file this module wrote, found by two C-speed regex passes (``Trace.to_dict`` puts ``id`` first
    and ``"sample": N, "teacher"`` after the problem fields; inside JSON strings quotes are escaped, so these byte
    patterns only match keys). ``None`` when the file does not have exactly one of each per line, in order."""
    first = _FIRST_ID.match(data, 0, end)
    ids = ([first] if first else []) + list(_NEXT_ID.finditer(data, 0, end))
    samples = list(_SAMPLE_KEY.finditer(data, 0, end))
    if not (len(ids) == len(samples) == data.count(b"\n", 0, end)):
        return None
    starts = [m.start() for m in ids] + [end]
    if any(not starts[k] < m.start() < starts[k + 1] for k, m in enumerate(samples)):
        return None
    return [(i.group(1).decode("utf-8"), int(m.group(1))) for i, m in zip(ids, samples)]


def scan(path: str | os.PathLike) -> ScanResult:
    """The pairs already in ``path`` (missing file: none). A last line without its newline is torn: not counted."""
    path = Path(path)
    result = ScanResult()
    if not path.is_file():
        return result
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    result.torn_bytes = len(data) - end
    keys = _fast_keys(data, end)
    if keys is None:  # blank lines, hand-edited or foreign records: parse line by line, naming a bad line
        keys = [
            _key(line, path, number)
            for number, line in enumerate(data[:end].split(b"\n")[:-1], start=1)
            if line.strip()
        ]
    result.done = set(keys)
    result.records = len(keys)
    return result


def repair_torn_tail(path: str | os.PathLike) -> int:
    """Cut a torn last line (a write interrupted by a kill) off ``path``; return how many bytes were dropped."""
    path = Path(path)
    if not path.is_file():
        return 0
    with path.open("rb+") as handle:
        size = handle.seek(0, os.SEEK_END)
        pos, tail = size, b""
        while pos > 0 and b"\n" not in tail:  # read backwards until the last newline
            step = min(1 << 16, pos)
            pos -= step
            handle.seek(pos)
            tail = handle.read(step) + tail
        keep = pos + tail.rfind(b"\n") + 1 if b"\n" in tail else 0
        if keep < size:
            handle.truncate(keep)
            handle.flush()
            os.fsync(handle.fileno())
        return size - keep


class TraceWriter:
    """Appends JSON lines to a file; flushes after every problem and fsyncs at least every ``sync_every`` seconds."""

    def __init__(self, path: str | os.PathLike, sync_every: float = 2.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.sync_every = sync_every
        self._handle = self.path.open("a", encoding="utf-8")
        self._synced = time.monotonic()
        self.written = 0

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        self._handle.write("".join(dumps(record) + "\n" for record in records))  # one write per problem
        self._handle.flush()
        self.written += 1
        if time.monotonic() - self._synced >= self.sync_every:
            self.sync()

    def sync(self) -> None:
        os.fsync(self._handle.fileno())
        self._synced = time.monotonic()

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.flush()
            self.sync()
            self._handle.close()

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def part_path(output: str | os.PathLike, rank: int, world: int) -> Path:
    """The part file rank ``rank`` of ``world`` streams into."""
    return Path(f"{output}.rank{rank}of{world}.part.jsonl")


def part_files(output: str | os.PathLike) -> list[Path]:
    """Every part file of ``output`` left by any earlier or current data-parallel run."""
    return sorted(Path(p) for p in glob.glob(glob.escape(str(output)) + ".rank*of*.part.jsonl"))


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every complete record of a (possibly torn) output or part file."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    data = data[: data.rfind(b"\n") + 1]
    records = []
    for number, line in enumerate(data.split(b"\n"), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError as err:
                raise InputError(
                    f"malformed JSON ({err}); fix or remove the line, or pass --overwrite", path=path, line=number
                ) from None
    return records


def finalize(output: str | os.PathLike, sources: list[Path], order: list[str]) -> int:
    """Write ``output`` atomically from the records of ``sources`` (the output itself and/or part files):
    deduplicated by ``(id, sample)`` (first wins), sorted by problem position in ``order`` then sample; records of
    problems not in ``order`` (an earlier run over more problems) are kept at the end. Return the record count."""
    position = {pid: i for i, pid in enumerate(order)}
    seen: set[Key] = set()
    records = []
    for source in sources:
        for record in read_records(source):
            key = (str(record["id"]), int(record["sample"]))
            if key not in seen:
                seen.add(key)
                records.append(record)
    records.sort(key=lambda r: (position.get(str(r["id"]), len(position)), str(r["id"]), int(r["sample"])))
    with atomic_open(output, overwrite=True) as handle:
        for start in range(0, len(records), 4096):
            handle.write("".join(dumps(r) + "\n" for r in records[start : start + 4096]))
    return len(records)
