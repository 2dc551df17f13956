"""Problems: the first record of the pipeline, and the readers that turn user files or hub datasets into them.

A problem is ``{"id", "problem", "answer", "source", ...extras}`` (see ``data/README.md``). Readers accept a local
``.jsonl`` / ``.json`` / ``.parquet`` / ``.csv`` file or a Hugging Face ``datasets`` hub id, with a field mapping so
that any dataset can be used without editing it. Gold answers stay raw here; ``w2sr.verification.gold`` normalises
them per source when verifying. Exercised by ``w2sr generate --problems data/toy/train.jsonl ...`` and
``pytest tests/records/test_problems.py``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from w2sr.records.jsonl import InputError, iter_jsonl, read_utf8
from w2sr.records.options import document_fields

CORE_FIELDS = ("id", "problem", "answer", "source")


@dataclass
class Problem:
    """One math problem with its gold answer. ``extras`` holds any other fields (level, subject, solution...)."""

    id: str
    problem: str
    answer: Any
    source: str = ""
    extras: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "problem": self.problem, "answer": self.answer, "source": self.source, **self.extras}

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Problem:
        extras = {k: v for k, v in record.items() if k not in CORE_FIELDS}
        return cls(
            id=str(record["id"]),
            problem=record["problem"],
            answer=record["answer"],
            source=str(record.get("source") or ""),
            extras=extras,
        )


@document_fields
@dataclass
class FieldMap:
    """Which input fields hold the problem text, the gold answer and the id."""

    problem: str = "problem"
    """the field that holds the problem text."""
    answer: str = "answer"
    """the field that holds the gold answer."""
    id: str | None = "id"
    """the field that holds each problem's id (null: a stable id is made from the source, position and text)."""


LOCAL_SUFFIXES = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def looks_like_path(value: str) -> bool:
    """True for what is meant as a file path rather than a hub id ``owner/name``: absolute or relative markers
    (``/``, ``./``, ``~``), more than one slash, a backslash, or a file-name suffix such as ``.txt`` / ``.jsonl.gz``."""
    if value.startswith(("/", "./", "../", "~", ".\\")) or "\\" in value or value.count("/") > 1:
        return True
    suffix = Path(value).suffix[1:]
    return 0 < len(suffix) <= 8 and suffix.isalnum() and suffix.islower() and not suffix.isdigit()


def _stable_id(source: str, index: int, text: str) -> str:
    digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:10]
    return f"{source or 'problem'}-{index}-{digest}"


def _read_local(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """Rows of a local file with 1-based line (JSONL) or row numbers, for error messages."""
    if path.suffix == ".jsonl":
        return list(iter_jsonl(path))
    if path.suffix == ".json":
        try:
            data = json.loads(read_utf8(path))
        except json.JSONDecodeError as err:
            raise InputError(f"malformed JSON ({err.msg})", path=path, line=err.lineno) from None
        if isinstance(data, dict):  # {"data": [...]} or {"split": [...]} layouts
            lists = [v for v in data.values() if isinstance(v, list)]
            if len(lists) != 1:
                raise InputError("expected a JSON list of objects (or an object holding one list)", path=path)
            data = lists[0]
        if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
            raise InputError("expected a JSON list of objects", path=path)
        return list(enumerate(data, start=1))
    import datasets  # parquet / csv go through the datasets library

    table = datasets.load_dataset(LOCAL_SUFFIXES[path.suffix], data_files=str(path), split="train")
    return list(enumerate(table, start=1))


def missing_field_message(option: str, key: str, row: dict[str, Any]) -> str:
    """``missing required field``, a close field name when there is one ("did you mean"), the fields the record does
    have and the option that maps another one (``--fields.problem question``)."""
    import difflib

    have = sorted(map(str, row))
    close = difflib.get_close_matches(key, have, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    listed = ", ".join(have[:30]) + (f", ... ({len(have)} fields)" if len(have) > 30 else "") if have else "none"
    unset = " (or --fields.id null for generated ids)" if option == "id" else ""
    return (
        f"missing required field; {hint}the record has: {listed}; "
        f"name the one to use with --fields.{option} FIELD{unset}"
    )


def load_problems(
    source: str,
    *,
    split: str = "test",
    fields: FieldMap | None = None,
    name: str | None = None,
    limit: int | None = None,
    subset: str | None = None,
) -> list[Problem]:
    """Load problems from a local file or a ``datasets`` hub id.

    ``fields`` maps the input's columns onto the problem record; ``name`` sets ``source`` (default: the file's parent
    folder name, or the hub id). Missing fields and duplicate ids raise :class:`InputError` naming file and line.
    """
    fields = fields or FieldMap()
    if limit is not None and limit < 1:
        raise InputError(f"must be at least 1, got {limit}", field="limit")
    path = Path(source)
    if path.suffix in LOCAL_SUFFIXES or (not path.exists() and looks_like_path(source)):
        if not path.is_file():
            raise InputError("file not found" if not path.exists() else "is a folder, not a problems file", path=path)
        rows = _read_local(path)
        default_name = path.parent.name if path.stem in {"test", "train", "validation", "dev"} else path.stem
    elif path.exists():
        raise InputError(f"unsupported file type '{path.suffix}' (use one of {sorted(LOCAL_SUFFIXES)})", path=path)
    else:
        import datasets

        try:
            rows = list(enumerate(datasets.load_dataset(source, subset, split=split), start=1))
        except (ConnectionError, FileNotFoundError, OSError, ValueError) as err:  # offline, unknown id, bad split
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise InputError(
                f"not a local file, and the datasets hub id could not be loaded: {first}", path=source, field="problems"
            ) from None
        default_name = source
    name = name if name is not None else default_name
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for line, row in rows:
        if limit is not None and len(problems) >= limit:
            break
        for option, key in (("problem", fields.problem), ("answer", fields.answer), ("id", fields.id)):
            if key is not None and key not in row:
                if key == fields.id == "id":  # the default id field is optional: fall back to a stable id
                    continue
                raise InputError(missing_field_message(option, key, row), path=source, line=line, field=key)
        text = row[fields.problem]
        if not isinstance(text, str) or not text.strip():
            raise InputError("expected a non-empty string", path=source, line=line, field=fields.problem)
        pid = str(row[fields.id]) if fields.id and fields.id in row else _stable_id(name, line - 1, text)
        if pid in seen:
            raise InputError(
                f"duplicate id '{pid}' (first seen at line {seen[pid]})",
                path=source,
                line=line,
                field=fields.id or "id",
            )
        seen[pid] = line
        extras = {k: v for k, v in row.items() if k not in {fields.problem, fields.answer, fields.id, *CORE_FIELDS}}
        problems.append(
            Problem(
                id=pid, problem=text, answer=row[fields.answer], source=str(row.get("source") or name), extras=extras
            )
        )
    if not problems:
        raise InputError("no problems found", path=source)
    return problems
