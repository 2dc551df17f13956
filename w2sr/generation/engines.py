"""Several vLLM engines in one command (``--vllm.data_parallel_size N`` of ``w2sr generate`` and ``w2sr evaluate``).

With one engine, the jobs (one traces file each: ``w2sr.generation.jobs``) run in this process on one engine, built
only when something is left to generate. With N, N engine processes are started (``spawn``), each pinned to its own
devices: on GPUs ``CUDA_VISIBLE_DEVICES`` names its ``tensor_parallel_size`` GPUs of those visible; on a CPU it gets
its own share of this process's cores (``os.sched_setaffinity``, inherited by vLLM's engine-core and worker processes,
and ``VLLM_CPU_OMP_THREADS_BIND``, where vLLM's CPU worker binds its OpenMP threads; without it every engine binds
the same cores). Engine ``r`` generates the problems at positions ``p % N == r`` of every job into its part file;
this process then merges each job's parts in problem order. Samples are seeded per ``(seed, id, sample)``, so the
merged output equals one engine's. No engine outlives the command: each engine process and, through the vLLM plugin
``w2sr.generation.vllm_plugin``, each process vLLM starts below it, is killed by Linux when its parent dies (SIGKILL
included); on SIGTERM / Ctrl-C this process stops them before it exits. Exercised by ``pytest
tests/generation/test_engines.py`` (toy engines) and ``make test-vllm`` (``tests/generation/test_vllm_engines.py``:
two real CPU engines).
"""

from __future__ import annotations

import functools
import inspect
import multiprocessing
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from rich.console import Console

from w2sr.generation import backends
from w2sr.generation.card import GenerationStats
from w2sr.generation.jobs import GenerateJob, finish_job, generate_share, start_job
from w2sr.generation.vllm_options import VLLMOptions
from w2sr.generation.vllm_plugin import PARENT_ENV, exit_with_parent
from w2sr.records.jsonl import InputError

OPTION = "vllm.data_parallel_size"
STOP_GRACE_S = 10.0  # after SIGTERM, before SIGKILL
EXIT_GRACE_S = 60.0  # for an engine process that sent its results to exit by itself


@dataclass
class EngineSlot:
    """Engine ``rank`` of ``world`` and the devices it may use: GPU ids (``CUDA_VISIBLE_DEVICES``) or CPU cores."""

    rank: int
    world: int
    gpus: list[str] = field(default_factory=list)
    """entries of ``CUDA_VISIBLE_DEVICES`` for this engine (empty on a CPU)."""
    cpus: list[int] = field(default_factory=list)
    """CPU cores this engine's processes run on (empty on GPUs: not pinned)."""
    cpu_groups: list[list[int]] = field(default_factory=list)
    """the cores of each tensor-parallel worker of this engine (CPU only)."""

    def environment(self) -> dict[str, str]:
        """The variables the engine process starts with (vLLM reads them when it starts)."""
        if self.gpus:
            return {"CUDA_VISIBLE_DEVICES": ",".join(self.gpus)}
        return {"VLLM_CPU_OMP_THREADS_BIND": "|".join(",".join(map(str, group)) for group in self.cpu_groups)}

    def describe(self) -> dict[str, Any]:
        return {"rank": self.rank, "gpus": self.gpus} if self.gpus else {"rank": self.rank, "cpus": self.cpus}


def _split(items: list[Any], parts: int) -> list[list[Any]]:
    """``items`` in ``parts`` contiguous groups whose sizes differ by at most one."""
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for index in range(parts):
        end = start + size + (1 if index < extra else 0)
        out.append(items[start:end])
        start = end
    return out


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` entries."""
    import torch

    count = torch.cuda.device_count()
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None and given.strip():
        return [entry.strip() for entry in given.split(",") if entry.strip()][:count]
    return [str(index) for index in range(count)]


def plan_engines(engines: int, tensor_parallel_size: int = 1, gpu: bool = False) -> list[EngineSlot]:
    """One slot per engine, each with its own devices; exit 2 (naming the option) when there are too few."""
    if engines < 1:
        raise InputError(f"must be at least 1, got {engines}", field=OPTION)
    if gpu:
        gpus = visible_gpus()
        need = engines * tensor_parallel_size
        if need > len(gpus):
            raise InputError(
                f"{engines} engines x tensor_parallel_size {tensor_parallel_size} need {need} GPUs; "
                f"{len(gpus)} are visible ({','.join(gpus) or 'none'})",
                field=OPTION,
            )
        return [
            EngineSlot(rank, engines, gpus=gpus[rank * tensor_parallel_size : (rank + 1) * tensor_parallel_size])
            for rank in range(engines)
        ]
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    need = engines * tensor_parallel_size
    if need > len(cpus):
        raise InputError(
            f"{engines} engines x tensor_parallel_size {tensor_parallel_size} need {need} CPU cores (one per "
            f"worker at least); this process may use {len(cpus)}",
            field=OPTION,
        )
    return [
        EngineSlot(rank, engines, cpus=share, cpu_groups=_split(share, tensor_parallel_size))
        for rank, share in enumerate(_split(cpus, engines))
    ]


def run_jobs(
    jobs: list[GenerateJob],
    make_engine: Callable[[], tuple[Any, Any]],
    *,
    engines: int = 1,
    tensor_parallel_size: int = 1,
    gpu: bool = False,
    console: Console | None = None,
) -> list[dict[str, Any]]:
    """Complete every job (in order) on ``engines`` engines; return each job's generation card. ``make_engine``
    builds ``(backend, tokenizer)``; with several engines it runs in each engine process, so it must pickle."""
    console = console or Console(stderr=True)
    started = time.time()
    if engines == 1:
        engine = _Lazy(make_engine)
        cards = []
        for job in jobs:
            start_job(job, 1, console)
            share = generate_share(job, engine)
            cards.append(finish_job(job, [share], 1, started, console))
        return cards
    slots = plan_engines(engines, tensor_parallel_size, gpu)
    for job in jobs:
        start_job(job, engines, console)
    shares = run_engine_processes(slots, jobs, make_engine)
    layout = {"engines": [slot.describe() for slot in slots]}
    return [
        finish_job(job, [share[index] for share in shares], engines, started, console, extra=layout)
        for index, job in enumerate(jobs)
    ]


class _Lazy:
    """The engine, built on the first call (never when every job is already complete)."""

    def __init__(self, make_engine: Callable[[], tuple[Any, Any]]) -> None:
        self.make_engine, self.built = make_engine, None

    def __call__(self) -> tuple[Any, Any]:
        if self.built is None:
            self.built = self.make_engine()
        return self.built

    def shutdown(self) -> None:
        """Stop the engine's own processes (a vLLM engine core), once: a process exits only after its children."""
        backend = self.built[0] if self.built is not None else None
        self.built = None
        if backend is not None and hasattr(backend, "shutdown"):
            backend.shutdown()


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` while a process is spawned (it copies the environment when it starts)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_engine_processes(
    slots: list[EngineSlot], jobs: list[GenerateJob], make_engine: Callable[[], tuple[Any, Any]]
) -> list[list[GenerationStats]]:
    """Start one engine process per slot, wait for all; return ``[rank][job]`` statistics. A failed engine stops
    the others and raises (an ``InputError`` as such: exit 2)."""
    context = multiprocessing.get_context("spawn")
    processes: list[Any] = []
    pipes: list[Connection] = []
    results: dict[int, list[GenerationStats]] = {}
    try:
        with _environment({PARENT_ENV: str(os.getpid())}):  # engine processes die with this one (vllm_plugin.py)
            for slot in slots:
                receive, send = context.Pipe(duplex=False)
                with _environment(slot.environment()):
                    process = context.Process(
                        target=engine_main, args=(slot, jobs, make_engine, send), name=f"w2sr-engine-{slot.rank}"
                    )
                    process.start()
                send.close()
                processes.append(process)
                pipes.append(receive)
        while len(results) < len(slots):
            waiting = {pipes[rank]: rank for rank in range(len(slots)) if rank not in results}
            for ready in wait(list(waiting)):
                rank = waiting[ready]  # type: ignore[index]
                try:
                    status, payload = ready.recv()  # type: ignore[union-attr]
                except EOFError:
                    processes[rank].join(STOP_GRACE_S)
                    raise RuntimeError(
                        f"engine {rank} of {len(slots)} died (exit code {processes[rank].exitcode}) before it finished"
                    ) from None
                if status == "input":
                    raise InputError(payload)
                if status == "error":
                    raise RuntimeError(f"engine {rank} of {len(slots)} failed:\n{payload}")
                results[rank] = payload
        for process in processes:  # each has stopped its engine; a straggler is stopped below
            process.join(EXIT_GRACE_S)
        return [results[rank] for rank in range(len(slots))]
    finally:
        stop_processes(processes)


def stop_processes(processes: list[Any]) -> None:
    """SIGTERM every live engine process, then SIGKILL those still alive after a grace period."""
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()


def reap_process_group() -> None:
    """Make this process lead its own process group and fork a tiny reaper that SIGKILLs the whole group (vLLM's
    engine core and workers included) as soon as this process has exited, however it exited. The vLLM plugin's
    parent-death signal does not cover a child started just before its parent died: vLLM's engine core first waits
    up to 5 minutes in a handshake with its (dead) parent, and only then loads the plugin (seen: an engine core left
    running after a SIGKILL that came while the second engine was starting). Linux only."""
    if not sys.platform.startswith("linux"):
        return
    os.setpgid(0, 0)
    read_end, write_end = os.pipe()  # not inherited by the processes vLLM execs: EOF exactly when this one exits
    if os.fork() == 0:  # the reaper: before any thread is started here, so forking is safe
        os.close(write_end)
        try:
            while os.read(read_end, 1):
                pass
        finally:
            os.killpg(0, signal.SIGKILL)  # the group: this engine process's descendants and the reaper itself
            os._exit(0)
    os.close(read_end)
    _KEEP_OPEN.append(write_end)


_KEEP_OPEN: list[int] = []  # the reaper's pipe stays open as long as this engine process lives


def engine_main(
    slot: EngineSlot, jobs: list[GenerateJob], make_engine: Callable[[], tuple[Any, Any]], pipe: Connection
) -> None:
    """One engine process: die with the parent, take everything below it along, keep to the slot's cores, generate
    share ``rank`` of every job."""
    exit_with_parent()
    if slot.cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, slot.cpus)
    reap_process_group()
    engine = _Lazy(make_engine)
    try:
        shares = [
            generate_share(job, engine, slot.rank, slot.world, progress=job.progress and slot.rank == 0) for job in jobs
        ]
        engine.shutdown()  # before the results: the parent waits for this process to exit
        pipe.send(("ok", shares))
    except InputError as err:
        pipe.send(("input", str(err)))
    except Exception:  # noqa: BLE001 (any failure goes back to the parent, which stops the other engines)
        pipe.send(("error", traceback.format_exc()))
    finally:
        pipe.close()
        engine.shutdown()


def check_data_parallel(backend: str, options: VLLMOptions) -> None:
    """``--vllm.data_parallel_size`` is for the vLLM backend only (exit 2 before anything is loaded)."""
    if options.data_parallel_size > 1 and backend != "vllm":
        raise InputError(
            f"{options.data_parallel_size} engines need --backend vllm (the {backend} backend runs one model per "
            "process: use --trainer.devices N for the hf backend)",
            field=OPTION,
        )


@dataclass
class ModuleRecipe:
    """How an engine process rebuilds the ``model:`` module (a ``StudentModule``): its class and hyper-parameters.
    The module itself does not pickle (it holds the CLI's optimizer factory, a closure)."""

    cls: type
    hparams: dict[str, Any]

    def make_backend(self, kind: str, device: Any, options: VLLMOptions) -> tuple[Any, Any]:
        return backends.make_backend(self.cls(**self.hparams), kind, device, options)


def init_arguments(cls: type, hparams: dict[str, Any]) -> dict[str, Any]:
    """The hyper-parameters ``cls.__init__`` takes (LightningCLI adds its own, e.g. ``_instantiator``)."""
    parameters = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return hparams
    return {name: value for name, value in hparams.items() if name in parameters and name != "self"}


def run_model_jobs(
    jobs: list[GenerateJob], model: Any, kind: str, device: Any, options: VLLMOptions, console: Console | None = None
) -> list[dict[str, Any]]:
    """The jobs on ``model`` (a ``StudentModule``) with backend ``kind``: vLLM on ``options.data_parallel_size``
    engines, any other backend in this process; each engine is built only when something is left to generate."""
    from w2sr.generation.vllm_options import on_gpu

    engines = options.data_parallel_size if kind == "vllm" else 1
    if engines == 1:
        make_engine = functools.partial(backends.make_backend, model, kind, device, options)
    else:
        recipe = ModuleRecipe(type(model), init_arguments(type(model), dict(model.hparams)))
        make_engine = functools.partial(recipe.make_backend, kind, device, options)
    return run_jobs(
        jobs,
        make_engine,
        engines=engines,
        tensor_parallel_size=options.tensor_parallel_size,
        gpu=engines > 1 and on_gpu(),
        console=console,
    )
