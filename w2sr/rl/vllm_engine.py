"""The vLLM rollout engine of ``model.rl.backend: vllm``: a ``vllm.LLM`` in the training process, kept in step with
the policy.

The engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, as TRL's colocate mode), beside a policy on one
device (not under DDP / FSDP / DeepSpeed: a per-rank engine needs vLLM's ``external_launcher``), and is built by the
generation stage's helpers (``w2sr.generation.vllm_options``: w2sr's dtype, KV-cache sizing on a CPU, start-up errors
as exit 2), with ``model.rl.vllm`` options. Before each generation, whenever an optimizer step changed the policy since
the last push (with ``num_iterations`` 1: after every optimizer step), the policy's weights are pushed with vLLM's
in-place reload (``collective_rpc("reload_weights")``: every layer is restored to its loadable form, loaded and
processed again, so the CPU build's repacked linear kernels are rebuilt too). A LoRA policy is pushed merged (base +
scale * B A, computed out of place: the trained weights are not touched). On the CPU build a tied LM head is not a
reloaded layer (its weight is the embedding's): its packed GEMM kernel is rebuilt from the new embedding afterwards.
Rollouts are one request per completion with its own seed (``w2sr.generation.vllm.sampling_params``), prompts as token
ids. Exercised by ``pytest -m vllm tests/rl/test_vllm_sync.py`` (``make test-vllm``: the real CPU engine).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from w2sr.generation.base import SamplingOptions
from w2sr.records.jsonl import InputError
from w2sr.rl.rollouts import Rollout, split_completion

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule as GRPOStudent  # w2sr.rl.module.GRPOStudent (no import cycle)

IN_PROCESS_ENV = "VLLM_ENABLE_V1_MULTIPROCESSING"


def policy_weights(model: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """The policy's weights under their Hugging Face checkpoint names; LoRA layers merged out of place."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    if not isinstance(model, PeftModel):
        for name, param in model.named_parameters():
            yield name, param.detach()
        return
    base = model.get_base_model()
    adapter = model.active_adapter
    lora_modules = {name: module for name, module in base.named_modules() if isinstance(module, LoraLayer)}
    for name, param in base.named_parameters():
        if "lora_" in name:
            continue
        owner, _, leaf = name.rpartition(".")
        if owner.endswith(".base_layer"):
            owner = owner[: -len(".base_layer")]
            module = lora_modules.get(owner)
            if module is not None and leaf == "weight" and adapter in module.lora_A:
                yield f"{owner}.{leaf}", (param + module.get_delta_weight(adapter)).detach()
                continue
        yield f"{owner}.{leaf}" if owner else leaf, param.detach()


def _refresh_tied_heads(model: torch.nn.Module) -> None:  # pragma: no cover - runs inside the vLLM worker
    """CPU build: rebuild the packed GEMM of layers that keep their weight (embeddings, tied LM heads)."""
    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

    for module in model.modules():
        weight = getattr(module, "weight", None)
        if hasattr(module, "cpu_linear") and isinstance(weight, torch.Tensor) and weight.dim() == 2 and weight.numel():
            dispatch_cpu_unquantized_gemm(module, remove_weight=False)


class PolicyEngine:
    """A vLLM engine serving the current policy's rollouts."""

    def __init__(self, llm: Any, stops: list[int]) -> None:
        self.llm, self.stops = llm, stops
        self.synced_step: int | None = None
        self.pushes = 0

    @classmethod
    def start(cls, module: GRPOStudent) -> PolicyEngine:
        """Build the engine for the module's base model (its weights are pushed before the first rollouts)."""
        from w2sr.generation.hf import stop_token_ids
        from w2sr.generation.vllm_options import (
            check_engine_options,
            check_vllm,
            engine_kwargs,
            model_config,
            on_gpu,
            resolve_dtype,
            startup_error,
        )

        check_vllm()
        hp = module.hparams
        if hp.quantization == "nf4":
            raise InputError(
                "model.rl.backend vllm cannot serve a 4-bit (QLoRA) policy; use hf", field="model.rl.backend"
            )
        strategy = type(module.trainer.strategy).__name__
        if "FSDP" in strategy or "DeepSpeed" in strategy or module.trainer.world_size > 1:
            raise InputError(
                f"model.rl.backend vllm runs one engine beside a single-device policy, not {strategy} on "
                f"{module.trainer.world_size} devices (a per-rank engine needs vLLM's external_launcher, not done "
                "yet); use backend hf",
                field="model.rl.backend",
            )
        options = module.rl.vllm
        path = module._require_model_path()
        kwargs = engine_kwargs(
            path,
            hp.tokenizer_name_or_path,
            None,
            dataclasses.replace(options, dtype=None),
            dtype=resolve_dtype(hp.dtype, options.dtype),
            trust_remote_code=hp.trust_remote_code,
        )
        kwargs = check_engine_options(kwargs, model_config(path, hp.trust_remote_code), gpu=on_gpu())
        from vllm import LLM

        previous = os.environ.get(IN_PROCESS_ENV)
        os.environ[IN_PROCESS_ENV] = "0"  # the engine in this process: its weights can be replaced directly
        try:
            llm = LLM(**kwargs)
        except (ValueError, RuntimeError, TypeError) as err:
            raise startup_error(err) from err
        finally:  # read when the engine is built: later engines (w2sr generate in this process) are not affected
            if previous is None:
                os.environ.pop(IN_PROCESS_ENV, None)
            else:
                os.environ[IN_PROCESS_ENV] = previous
        return cls(llm, stop_token_ids(module.tokenizer, module.model))

    def sync(self, module: GRPOStudent) -> None:
        """Push the policy's weights if an optimizer step changed them since the last push."""
        step = module.trainer.global_step if module._trainer is not None else -1
        if self.synced_step == step and step >= 0:
            return
        self.push(module.model)
        self.synced_step = step

    def push(self, model: Any) -> None:
        """Load ``model``'s weights into the engine (in place) and drop its prefix cache."""
        from vllm.platforms import current_platform

        weights = list(policy_weights(model))
        self.llm.collective_rpc(
            "reload_weights", kwargs={"weights_iterator": iter(weights), "is_checkpoint_format": True}
        )
        if current_platform.is_cpu():
            self.llm.apply_model(_refresh_tied_heads)
        self.llm.reset_prefix_cache()
        self.pushes += 1

    def generate(self, prompts: list[list[int]], seeds: list[int], sampling: SamplingOptions) -> list[Rollout]:
        """One completion per ``(prompt, seed)``, in order."""
        from w2sr.generation.vllm import sampling_params

        params = [sampling_params(sampling, sampling.max_new_tokens, seed, self.stops) for seed in seeds]
        outputs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
        stops = set(self.stops)
        rollouts = []
        for prompt, output in zip(prompts, outputs):
            ids, truncated = split_completion(list(output.outputs[0].token_ids), stops, sampling.max_new_tokens)
            rollouts.append(Rollout(list(prompt), ids, truncated))
        return rollouts

    def rollouts(self, module: GRPOStudent, prompts: list[list[int]], seeds: list[int]) -> list[Rollout]:
        """The policy's rollouts: sync first, then sample at the RL temperature."""
        self.sync(module)
        rl = module.rl
        sampling = SamplingOptions(n=1, temperature=rl.temperature, top_p=rl.top_p, max_new_tokens=rl.max_new_tokens)
        return self.generate(prompts, seeds, sampling)

    def close(self) -> None:
        """Release the engine and the process group it set up in this process (a later engine starts clean)."""
        llm, self.llm = self.llm, None
        if llm is None:
            return
        shutdown = getattr(getattr(llm, "llm_engine", None), "shutdown", None)
        if callable(shutdown):
            shutdown()
        del llm
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        cleanup_dist_env_and_memory()
