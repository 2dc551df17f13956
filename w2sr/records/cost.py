"""The cost record of a stage (issue 25.3): wall and CPU seconds, devices, tokens, model FLOPs and peak memory, the
FLOPs formula, and a clock that measures a stage without importing torch.

Every stage that spends compute writes one :class:`StageCost` as JSON under the key ``"cost"`` of the file it already
writes: the generation card (``<output>.card.json``), the ``w2sr verify --summary`` JSON and a fit run's
``<default_root_dir>/cost.json`` (``w2sr.runtime.cost.CostMeter``). FLOPs are the standard model-FLOPs estimate,
stated in every record: ``2N`` per generated token (a forward pass) and ``6N`` per trained token (forward + backward),
``N`` the parameter count of the loaded model (trainable and frozen); attention and the prompt tokens are not counted,
in either arm. The record lives here, in the torch-free bottom layer, because ``generation`` and ``verification``
write it and ``evaluation`` reads it. Exercised by ``pytest tests/records/test_cost_record.py`` and by
``w2sr generate``, ``w2sr verify --summary`` and ``w2sr fit`` (``pytest tests/cli/test_cost_e2e.py``).
"""

from __future__ import annotations

import json
import math
import os
import resource
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from w2sr.records.jsonl import InputError

Stage = Literal["generate", "verify", "fit", "rl"]
STAGES: tuple[str, ...] = ("generate", "verify", "fit", "rl")
FLOPS_PER_GENERATED_TOKEN = 2  # x N: one forward pass
FLOPS_PER_TRAINED_TOKEN = 6  # x N: forward (2N) + backward (4N)
FLOPS_FORMULA = "2N per generated token + 6N per trained token"


def model_flops(parameters: int | None, tokens_generated: int, tokens_trained: int) -> float | None:
    """``2N`` per generated token + ``6N`` per trained token; None when ``N`` is unknown and tokens were spent."""
    if not tokens_generated and not tokens_trained:
        return 0.0
    if parameters is None:
        return None
    return float(parameters) * (
        FLOPS_PER_GENERATED_TOKEN * int(tokens_generated) + FLOPS_PER_TRAINED_TOKEN * int(tokens_trained)
    )


@dataclass
class StageCost:
    """What one stage spent (the ``"cost"`` object of its card, summary or ``cost.json``)."""

    stage: Stage
    """Which stage: ``generate``, ``verify``, ``fit`` (SFT) or ``rl`` (the RL fit)."""
    wall_seconds: float = 0.0
    """Wall-clock seconds of the stage's work (a resumed fit: the sum over its runs up to the checkpoint resumed)."""
    devices: int = 1
    """Devices held: ranks of a fit or of HF generation, a vLLM engine's GPUs; 1 for CPU-only verification."""
    device_kind: str = "cpu"
    """``cpu`` or ``cuda:<device name>``."""
    device_seconds: float | None = None
    """Wall seconds x devices (computed when not given)."""
    cpu_seconds: float = 0.0
    """CPU time of the stage's processes: every rank, its child processes (grading workers, data loader workers)."""
    tokens_generated: int = 0
    """Tokens sampled (completions, rollouts), summed over ranks and engines."""
    tokens_trained: int = 0
    """Target tokens trained on (the tokens with a loss), summed over ranks."""
    parameters: int | None = 0
    """N, the parameter count of the loaded model used for the FLOPs (trainable + frozen); 0 without a model."""
    flops: float | None = field(init=False, default=None)
    """Model FLOPs by ``flops_formula`` (null when N is unknown)."""
    flops_formula: str = field(init=False, default=FLOPS_FORMULA)
    """How ``flops`` is computed: ``2N per generated token + 6N per trained token``."""
    peak_memory_bytes: int | None = None
    """Peak memory, max over ranks: CUDA max allocated on a GPU, the process's peak RSS on the CPU; null: unknown."""
    phases: dict[str, float] = field(default_factory=dict)
    """Seconds per phase, e.g. an RL fit's ``rollout``, ``scoring``, ``training``."""
    segments: int = 1
    """Runs that made the figures: 1, plus one per resume from a checkpoint."""

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise InputError(f"unknown stage {self.stage!r}; one of {list(STAGES)}", field="cost.stage")
        if self.devices < 0 or self.wall_seconds < 0 or self.tokens_generated < 0 or self.tokens_trained < 0:
            raise InputError("negative figures", field="cost")
        if self.device_seconds is None:
            self.device_seconds = self.wall_seconds * self.devices
        self.flops = model_flops(self.parameters, self.tokens_generated, self.tokens_trained)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object written under ``"cost"``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, path: str | os.PathLike | None = None) -> StageCost:
        """A record read from a file; a missing or wrong field, or another FLOPs formula, is an ``InputError``."""
        if not isinstance(data, dict):
            raise InputError("expected a JSON object", path=path, field="cost")
        if data.get("flops_formula", FLOPS_FORMULA) != FLOPS_FORMULA:
            raise InputError(
                f"FLOPs counted as {data['flops_formula']!r}, not {FLOPS_FORMULA!r}: not comparable",
                path=path,
                field="cost.flops_formula",
            )
        known = {f.name for f in fields(cls) if f.init}
        kwargs = {k: v for k, v in data.items() if k in known}
        if "stage" not in kwargs:
            raise InputError("missing", path=path, field="cost.stage")
        try:
            return cls(**kwargs)
        except TypeError as err:
            raise InputError(f"malformed cost record ({err})", path=path, field="cost") from None


def read_cost(path: str | os.PathLike, required: bool = True) -> StageCost | None:
    """The ``"cost"`` record of a card, summary or ``cost.json`` (a fit run's folder: its ``cost.json``)."""
    path = Path(path)
    if path.is_dir():
        path = path / "cost.json"
    if not path.is_file():
        if required:
            raise InputError("no such file (a stage writes its cost there)", path=path)
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(f"malformed JSON ({err.msg})", path=path) from None
    if not isinstance(data, dict) or "cost" not in data:
        if required:
            raise InputError("no cost record (written by w2sr since issue 25)", path=path, field="cost")
        return None
    return StageCost.from_dict(data["cost"], path)


def generation_cost(traces: str | os.PathLike) -> StageCost | None:
    """The cost in the generation card beside a traces file (``<traces>.card.json``), or None without one."""
    return read_cost(f"{traces}.card.json", required=False)


@dataclass
class CostTotal:
    """Several stages' costs added up (an arm of the comparison, or a verify summary's whole teacher side)."""

    stages: list[str] = field(default_factory=list)
    """The stages added, in order."""
    wall_seconds: float = 0.0
    """Sum of the stages' wall seconds (stages run one after another)."""
    device_seconds: float = 0.0
    """Sum of the stages' device-seconds."""
    cpu_seconds: float = 0.0
    """Sum of the stages' CPU seconds."""
    tokens_generated: int = 0
    """Tokens sampled, all stages."""
    tokens_trained: int = 0
    """Target tokens trained on, all stages."""
    flops: float | None = 0.0
    """Sum of the stages' FLOPs (null when one stage's is unknown)."""
    flops_formula: str = FLOPS_FORMULA
    """How each stage's FLOPs were counted."""

    @classmethod
    def of(cls, costs: Iterable[StageCost]) -> CostTotal:
        total = cls()
        for cost in costs:
            total.stages.append(cost.stage)
            total.wall_seconds += cost.wall_seconds
            total.device_seconds += float(cost.device_seconds or 0.0)
            total.cpu_seconds += cost.cpu_seconds
            total.tokens_generated += cost.tokens_generated
            total.tokens_trained += cost.tokens_trained
            total.flops = None if total.flops is None or cost.flops is None else total.flops + cost.flops
        return total


# ------------------------------------------------------------------------------------------------ measuring
def peak_rss_bytes() -> int:
    """This process's peak resident set size (``ru_maxrss``: kilobytes on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _torch_cuda() -> Any:
    """``torch.cuda`` when this process has already imported torch and initialised CUDA, else None (never imports)."""
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None) if torch is not None else None
    return cuda if cuda is not None and cuda.is_available() and cuda.is_initialized() else None


def cuda_peak_bytes() -> int | None:
    """CUDA max allocated bytes on this process's device (a rank's own GPU) since the last reset; None without CUDA
    here. Other GPUs are not asked: that would open a CUDA context on each of them."""
    cuda = _torch_cuda()
    return None if cuda is None else int(cuda.max_memory_allocated())


def reset_cuda_peak() -> None:
    cuda = _torch_cuda()
    if cuda is not None:
        cuda.reset_peak_memory_stats()


def peak_memory(device_type: str) -> int | None:
    """Peak memory for a stage on ``device_type``: CUDA max allocated (None when this process never used CUDA, e.g. a
    vLLM engine in its own process), or this process's peak RSS on the CPU."""
    return cuda_peak_bytes() if device_type == "cuda" else peak_rss_bytes()


def device_kind(device: Any) -> str:
    """``cpu`` or ``cuda:<device name>`` for a ``torch.device`` or its string."""
    kind = getattr(device, "type", None) or str(device).split(":")[0]
    if kind != "cuda":
        return str(kind)
    cuda = sys.modules.get("torch").cuda  # a CUDA device object: torch is loaded
    index = getattr(device, "index", None)
    return f"cuda:{cuda.get_device_name(index if index is not None else cuda.current_device())}"


def parameter_count(model: Any) -> int:
    """N of a loaded model (anything with ``parameters()``), shared weights once: a 4-bit weight counts its
    unpacked shape (bitsandbytes ``quant_state``), a ZeRO-3 partitioned one its full size (``ds_numel``)."""
    total, seen = 0, set()
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        state = getattr(p, "quant_state", None)
        if state is not None and getattr(state, "shape", None) is not None:
            total += math.prod(state.shape)
        elif getattr(p, "ds_numel", None) is not None:
            total += int(p.ds_numel)
        else:
            total += int(p.numel())
    return total


def checkpoint_parameter_count(folder: str | os.PathLike) -> int | None:
    """N from the safetensors headers of a model folder (no weight is read), or None without safetensors files."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for path in files:
        with path.open("rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(size))
        total += sum(math.prod(t["shape"]) for name, t in header.items() if name != "__metadata__")
    return total


def _children(pid: int) -> list[int]:
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    found: list[int] = []
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                found += [int(c) for c in handle.read().split()]
        except OSError:
            continue
    return found


def _process_cpu(pid: int) -> float:
    """CPU seconds of a live (or zombie) process and of its children it reaped (Linux ``/proc``), else 0."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            stat = handle.read()
    except OSError:
        return 0.0
    ticks = stat.rsplit(")", 1)[1].split()[11:15]  # utime, stime, cutime, cstime
    return sum(int(t) for t in ticks) / os.sysconf("SC_CLK_TCK")


def descendants_cpu(exclude: Iterable[int] = ()) -> dict[int, float]:
    """CPU seconds of each live descendant of this process (``/proc``; empty elsewhere); the subtrees of ``exclude``
    (e.g. the other ranks of a run, which count their own) are left out."""
    skip, out, todo = set(exclude), {}, _children(os.getpid())
    while todo:
        pid = todo.pop()
        if pid in skip or pid in out:
            continue
        out[pid] = _process_cpu(pid)
        todo += _children(pid)
    return out


def _own_cpu() -> float:
    me, reaped = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + reaped.ru_utime + reaped.ru_stime


class StageClock:
    """Wall and CPU seconds of a stage: this process (all threads), the children it reaped and the live descendants
    (grading workers, a vLLM engine), less ``exclude``'s subtrees; named phases of wall time on the side."""

    def __init__(self, exclude: Iterable[int] = ()) -> None:
        self.exclude = set(exclude)
        self.phases: dict[str, float] = {}
        self._wall = self._cpu = 0.0
        self._before: dict[int, float] = {}
        self.start()

    def start(self) -> StageClock:
        self._wall, self._cpu = time.perf_counter(), _own_cpu()
        self._before = descendants_cpu(self.exclude)
        return self

    def wall_seconds(self) -> float:
        return time.perf_counter() - self._wall

    def cpu_seconds(self) -> float:
        """CPU seconds since ``start``: a descendant alive at the start counts only what it spent since (one reaped
        meanwhile is in this process's children's figure with its whole life, less its share before the start)."""
        now = descendants_cpu(self.exclude)
        return max(0.0, _own_cpu() - self._cpu + sum(now.values()) - sum(self._before.values()))

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Add the wall seconds of the ``with`` block to ``phases[name]``."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - started
