"""JSON-lines reading and writing shared by every stage: clear errors, atomic writes, no silent overwrites.

Every stage reads and writes one JSON object per line. Bad input raises :class:`InputError` naming the file, the
line and the field; the CLI turns it into exit code 2. Outputs are written to a temporary file beside the target and
renamed into place, so a failed run never leaves a partial file, and an existing output is only replaced when the
caller passes ``overwrite=True``. Exercised by ``pytest tests/records/test_jsonl.py``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO


class InputError(ValueError):
    """Bad user input: the message names the file, line and field. The CLI exits with code 2."""

    def __init__(
        self, message: str, *, path: str | os.PathLike | None = None, line: int | None = None, field: str | None = None
    ) -> None:
        where = []
        if path is not None:
            where.append(str(path) + (f":{line}" if line is not None else ""))
        if field is not None:
            where.append(f"field '{field}'")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)
        self.path, self.line, self.field = path, line, field


class OutputExistsError(InputError):
    """The output exists and the caller did not ask to overwrite it."""


def iter_jsonl(path: str | os.PathLike, required: Sequence[str] = ()) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, record)`` for each non-blank line; raise :class:`InputError` on the first bad one."""
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path=path)
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            line = decode_line(raw, path, number)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise InputError(f"malformed JSON ({err.msg} at column {err.colno})", path=path, line=number) from None
            if not isinstance(record, dict):
                raise InputError(f"expected a JSON object, got {type(record).__name__}", path=path, line=number)
            for name in required:
                if name not in record:
                    raise InputError("missing required field", path=path, line=number, field=name)
            yield number, record


def decode_line(raw: bytes, path: str | os.PathLike, line: int) -> str:
    """One line of a UTF-8 file (a leading byte-order mark is dropped); :class:`InputError` names the bad byte."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(
            f"not valid UTF-8 (byte 0x{raw[err.start]:02x} at column {err.start + 1}); save the file as UTF-8",
            path=path,
            line=line,
        ) from None
    return text[1:] if line == 1 and text.startswith("\ufeff") else text


def read_utf8(path: str | os.PathLike) -> str:
    """A whole UTF-8 text file; :class:`InputError` names the line of the first byte that is not UTF-8."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise InputError(
            f"not valid UTF-8 (byte 0x{data[err.start]:02x}); save the file as UTF-8", path=path, line=line
        ) from None


def read_jsonl(path: str | os.PathLike, required: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Read a whole JSONL file, validating that each record has the ``required`` fields."""
    return [record for _, record in iter_jsonl(path, required)]


def check_output(path: str | os.PathLike, overwrite: bool, option: str = "--overwrite") -> Path:
    """Refuse to replace an existing output unless ``overwrite``; return the path as a :class:`Path`.

    ``option`` is the command-line option that allows replacing it, named in the message.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError("is a folder; give a file path for this output", path=path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"output already exists; pass {option} true to replace it", path=path)
    check_writable_folder(path.parent)
    return path


def check_writable_folder(folder: str | os.PathLike) -> None:
    """Refuse, before any work, a folder that cannot be created or written (a file in the way, no permission)."""
    folder = Path(folder).absolute()
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"is a file, so the folder {folder} cannot be created", path=existing)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError("folder is not writable (permission denied)", path=existing)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)  # symlinks and hard links too
    except OSError:
        return a.resolve() == b.resolve()


def check_not_input(
    output: str | os.PathLike, inputs: dict[str, Any], *, folder: bool = False, option: str = "output"
) -> None:
    """Refuse (always, ``--overwrite`` or not) an output that is one of the inputs.

    ``inputs`` maps option names to the paths read (values that are not existing paths, such as hub ids or
    ``None``, are skipped). With ``folder=True`` the output is a folder that gets replaced as a whole, so an input
    anywhere inside it is refused too.
    """
    out = Path(output)
    for name, value in inputs.items():
        if not value or not isinstance(value, (str, os.PathLike)):
            continue
        src = Path(value)
        if not src.exists():
            continue
        inside = folder and out.exists() and src.resolve().is_relative_to(out.resolve())
        if inside or _same_file(out, src):
            raise InputError(
                f"{option} would overwrite the input {name} ({src}); choose another {option}", path=out, field=option
            )


# Temporary files and folders beside an output: ".<name>.w2sr-tmp.<host>.<pid>.<random>[.tmp]". The owner in the name
# lets the next writer remove what a killed run left behind, without touching a live writer's file.
TEMP_MARK = ".w2sr-tmp."
STALE_AFTER_S = 24 * 3600  # a temporary file of another host (shared file system) is stale after this long
_TEMP_NAME = re.compile(re.escape(TEMP_MARK) + r"(?P<host>.+)\.(?P<pid>\d+)\.[^.]+(\.tmp)?$")


def temp_prefix(path: Path) -> str:
    """Name prefix of this process's temporary files for ``path``."""
    return f".{path.name}{TEMP_MARK}{socket.gethostname()}.{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, someone else's
        return True
    return True


def clean_stale_temps(folder: str | os.PathLike, max_age_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove temporary files/folders of interrupted w2sr writes in ``folder``; return what was removed.

    Stale = written on this host by a process that no longer exists, or (any host) untouched for ``max_age_s``.
    """
    folder, removed, host, now = Path(folder), [], socket.gethostname(), time.time()
    try:
        entries = [entry for entry in folder.iterdir() if TEMP_MARK in entry.name]
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_NAME.search(entry.name)
        try:
            old = now - entry.lstat().st_mtime > max_age_s
        except OSError:
            continue
        dead = match is not None and match["host"] == host and not _pid_alive(int(match["pid"]))
        if not (dead or old):
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
        except OSError:
            pass
    return removed


def apply_umask(path: str | os.PathLike) -> None:
    """Give a file or folder made by ``tempfile`` (0600 / 0700) the permissions the user's umask gives new ones."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~umask)


def make_staging_dir(path: str | os.PathLike) -> Path:
    """A fresh temporary folder beside ``path`` (to be renamed onto it), after removing stale ones."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path.parent)
    staging = Path(tempfile.mkdtemp(prefix=temp_prefix(path), dir=path.parent))
    apply_umask(staging)
    return staging


@contextmanager
def atomic_open(path: str | os.PathLike, overwrite: bool = False) -> Iterator[TextIO]:
    """Open a temporary file beside ``path`` for writing; rename it onto ``path`` only if the block succeeds.

    The temporary file carries a recognisable name (see :data:`TEMP_MARK`); if this process is killed before the
    rename, the next write into the same folder removes it.
    """
    path = check_output(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent)
    apply_umask(tmp)  # mkstemp makes 0600 files; give outputs the usual permissions
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def dumps(record: dict[str, Any]) -> str:
    """One JSON line (no trailing newline), UTF-8 kept readable."""
    return json.dumps(record, ensure_ascii=False)


def write_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any]], overwrite: bool = False) -> int:
    """Write records atomically; return how many were written."""
    count = 0
    with atomic_open(path, overwrite) as handle:
        for record in records:
            handle.write(dumps(record) + "\n")
            count += 1
    return count


def write_json(path: str | os.PathLike, obj: Any, overwrite: bool = False) -> None:
    """Write one indented JSON document atomically."""
    with atomic_open(path, overwrite) as handle:
        json.dump(obj, handle, indent=2, ensure_ascii=False, default=str)
        handle.write("\n")
