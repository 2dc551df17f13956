"""vLLM generation backend (``--backend vllm`` in ``w2sr generate`` and ``w2sr evaluate``), imported lazily.

vLLM is an optional extra (``pip install "w2sr[vllm]"``); without it the CLI exits with code 2 before any model is
loaded (:func:`check_vllm`). Prompts are passed as token ids (``{"prompt_token_ids": ...}``): the chat template is
rendered and tokenized by w2sr exactly as for the HF backend, so both engines see the same prompt tokens. Each sample
is its own request (``n=1``) with its own seed (:func:`w2sr.generation.base.sample_seed`), so a problem's samples do
not depend on batch, ``--limit``, shard or resume; prefix caching makes the repeated prompts cheap. Stop token ids
are EOS, end-of-turn and start-of-new-turn (see ``w2sr.generation.hf.stop_token_ids``); special tokens are skipped
in the text. A student adapter is served through ``LoRARequest`` (``enable_lora`` and ``max_lora_rank`` from the
adapter's ``adapter_config.json``), never silently dropped. ``generate`` submits the whole request list to
``LLM.generate`` at once; ``stream`` adds every request to the engine at once and yields each problem as soon as
its samples finish (what ``w2sr generate`` uses, to write crash-safe output). Exercised by
``pytest tests/generation/test_vllm_backend.py`` (a fake ``vllm`` module) and, on a GPU,
``w2sr generate --config lightning_configs/paper/generate_teacher_vllm.yaml --problems FILE``.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from w2sr.generation.base import Completion, GenerationRequest, SamplingOptions
from w2sr.records.jsonl import InputError

INSTALL_HINT = 'pip install "w2sr[vllm]"'
LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM accepts


@dataclass
class VLLMOptions:
    """The vLLM engine (``--vllm.*``). ``enable_lora`` / ``max_lora_rank`` default to what the adapter needs;
    ``dtype`` defaults to ``model.dtype``."""

    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    max_model_len: int | None = None
    dtype: str | None = None
    enable_prefix_caching: bool = True
    seed: int = 0
    enable_lora: bool | None = None
    max_lora_rank: int | None = None
    max_num_seqs: int | None = None


def check_vllm() -> None:
    """Exit 2 (``InputError``) when vLLM is not installed, naming the extra to install."""
    try:
        found = importlib.util.find_spec("vllm") is not None
    except (ValueError, ImportError):  # sys.modules["vllm"] is None / has no spec
        found = "vllm" in sys.modules and sys.modules["vllm"] is not None
    if not found:
        raise InputError(f"the vllm backend needs vLLM, which is not installed: {INSTALL_HINT}", field="backend")


def adapter_rank(adapter_path: str) -> int:
    """The LoRA rank ``r`` of a peft adapter folder, rounded up to a rank vLLM accepts."""
    config_file = Path(adapter_path) / "adapter_config.json"
    if not config_file.is_file():
        raise InputError("not a peft adapter folder (no adapter_config.json)", path=adapter_path,
                         field="model.adapter_path")
    try:
        rank = int(json.loads(config_file.read_text(encoding="utf-8"))["r"])
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(f"cannot read the LoRA rank ({type(err).__name__}: {err})", path=config_file,
                         field="r") from None
    return next((allowed for allowed in LORA_RANKS if allowed >= rank), rank)


def engine_kwargs(model_path: str, tokenizer_path: str | None, adapter_path: str | None, options: VLLMOptions, *,
                  dtype: str = "auto", trust_remote_code: bool = False, quantization: str = "none") -> dict[str, Any]:
    """Keyword arguments for ``vllm.LLM``."""
    kwargs: dict[str, Any] = dict(
        model=model_path, tokenizer=tokenizer_path or model_path, dtype=options.dtype or dtype,
        tensor_parallel_size=options.tensor_parallel_size, gpu_memory_utilization=options.gpu_memory_utilization,
        enable_prefix_caching=options.enable_prefix_caching, seed=options.seed, trust_remote_code=trust_remote_code)
    if options.max_model_len is not None:
        kwargs["max_model_len"] = options.max_model_len
    if options.max_num_seqs is not None:
        kwargs["max_num_seqs"] = options.max_num_seqs
    if quantization == "nf4":
        kwargs["quantization"] = "bitsandbytes"
    if adapter_path:
        if options.enable_lora is False:
            raise InputError("an adapter is given but vllm.enable_lora is false: the adapter would be ignored",
                             field="vllm.enable_lora")
        rank = adapter_rank(adapter_path)
        kwargs.update(enable_lora=True, max_loras=1, max_lora_rank=max(options.max_lora_rank or 0, rank))
    elif options.enable_lora:
        kwargs.update(enable_lora=True, max_lora_rank=options.max_lora_rank or 64)
    return kwargs


def sampling_params(sampling: SamplingOptions, max_tokens: int, seed: int, stops: list[int]) -> Any:
    """One ``vllm.SamplingParams`` for one sample (``n=1``, its own seed)."""
    from vllm import SamplingParams

    return SamplingParams(n=1, temperature=sampling.temperature, top_p=sampling.top_p, max_tokens=max_tokens,
                          seed=seed, stop_token_ids=list(stops), skip_special_tokens=True)


def parse_completion(output: Any) -> Completion:
    """A vLLM ``CompletionOutput`` as our record: text, ``stop`` | ``length``, generated tokens (incl. the stop)."""
    reason = output.finish_reason
    if reason not in ("stop", "length"):
        raise RuntimeError(f"vLLM finished a request with reason {reason!r}")
    return Completion(text=output.text, finish_reason=reason, tokens=len(output.token_ids))


class VLLMBackend:
    """Generation with a ``vllm.LLM`` (built from the model options, or passed in)."""

    kind = "vllm"
    progress = True

    def __init__(self, llm: Any, tokenizer: Any, name: str, stops: list[int], adapter_path: str | None = None,
                 context_length: int | None = None) -> None:
        self.llm, self.tokenizer, self.name, self.stops = llm, tokenizer, name, stops
        self.lora_request = None
        if adapter_path:
            from vllm.lora.request import LoRARequest

            self.lora_request = LoRARequest("w2sr-adapter", 1, str(adapter_path))
        engine_config = getattr(getattr(llm, "llm_engine", None), "model_config", None)
        self.context_length = getattr(engine_config, "max_model_len", None) or context_length

    @classmethod
    def from_module(cls, module: Any, tokenizer: Any, options: VLLMOptions) -> VLLMBackend:
        """Build the engine for a ``StudentModule`` (its model, tokenizer, adapter, dtype, quantization)."""
        check_vllm()
        from vllm import LLM

        from w2sr.generation.hf import stop_token_ids

        hp = module.hparams
        kwargs = engine_kwargs(module._require_model_path(), hp.tokenizer_name_or_path, hp.adapter_path, options,
                               dtype=hp.dtype, trust_remote_code=hp.trust_remote_code, quantization=hp.quantization)
        llm = LLM(**kwargs)
        return cls(llm, tokenizer, name=module.label, stops=stop_token_ids(tokenizer, _generation_config(kwargs)),
                   adapter_path=hp.adapter_path, context_length=options.max_model_len)

    def _requests(self, requests: list[GenerationRequest],
                  sampling: SamplingOptions) -> tuple[list[dict[str, Any]], list[Any], list[int]]:
        """One vLLM request per sample: prompts (token ids), sampling params and the owning request index."""
        prompts, params, owners = [], [], []
        for index, request in enumerate(requests):
            ids = request.prompt_ids
            if ids is None:
                ids = self.tokenizer(request.text, add_special_tokens=False)["input_ids"]
            for seed in request.sample_seeds(sampling):
                prompts.append({"prompt_token_ids": list(ids)})
                params.append(sampling_params(sampling, request.new_tokens(sampling), seed, self.stops))
                owners.append(index)
        return prompts, params, owners

    def generate(self, requests: list[GenerationRequest], sampling: SamplingOptions) -> list[list[Completion]]:
        """All requests submitted at once to ``LLM.generate``; completions in request and sample order."""
        prompts, params, owners = self._requests(requests, sampling)
        outputs = self.llm.generate(prompts, params, use_tqdm=False, lora_request=self.lora_request)
        if len(outputs) != len(prompts):
            raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(prompts)} requests")
        results: list[list[Completion]] = [[] for _ in requests]
        for owner, output in zip(owners, outputs):
            results[owner].extend(parse_completion(c) for c in sorted(output.outputs, key=lambda c: c.index))
        return results

    def stream(self, requests: list[GenerationRequest],
               sampling: SamplingOptions) -> Iterator[tuple[int, list[Completion]]]:
        """Every request added to the engine at once; yield each problem when all its samples are finished."""
        engine = getattr(self.llm, "llm_engine", None)
        if not all(hasattr(engine, name) for name in ("add_request", "step", "has_unfinished_requests")):
            yield from enumerate(self.generate(requests, sampling))  # an engine without the step API
            return
        prompts, params, owners = self._requests(requests, sampling)
        pending = [len(r.sample_seeds(sampling)) for r in requests]
        slots: list[list[Completion | None]] = [[None] * count for count in pending]
        position: list[int] = []
        for index, count in enumerate(pending):
            position.extend(range(count))
        base = f"w2sr-{id(self)}-"
        for number, (prompt, param) in enumerate(zip(prompts, params)):
            engine.add_request(f"{base}{number}", prompt, param, lora_request=self.lora_request)
        while engine.has_unfinished_requests():
            for output in engine.step():
                if not output.finished or not str(output.request_id).startswith(base):
                    continue
                number = int(str(output.request_id)[len(base):])
                owner = owners[number]
                [completion] = [parse_completion(c) for c in output.outputs]
                slots[owner][position[number]] = completion
                pending[owner] -= 1
                if pending[owner] == 0:
                    yield owner, [c for c in slots[owner] if c is not None]
        if any(pending):
            raise RuntimeError(f"vLLM finished with {sum(pending)} samples missing")


def _generation_config(kwargs: dict[str, Any]) -> Any:
    """The model's generation config (for its EOS ids), or ``None`` when it has none."""
    try:
        from transformers import GenerationConfig

        config = GenerationConfig.from_pretrained(kwargs["model"], trust_remote_code=kwargs["trust_remote_code"])
    except (OSError, ValueError):
        return None

    class _Holder:
        generation_config = config

    return _Holder()
