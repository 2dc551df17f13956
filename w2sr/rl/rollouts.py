"""Rollouts: sampled completions of the current policy, their token tensors and their log-probabilities.

Prompts are the generation stage's (``w2sr.records.prompts``: the template rendered by the tokenizer's chat template,
tokenized without added special tokens) and completions stop on the same tokens (EOS, end-of-turn, start of a new
turn: ``w2sr.generation.hf.stop_token_ids``). A completion keeps its tokens up to and including its first stop
token; one that reaches ``max_new_tokens`` first is ``truncated``.

Per-sample seeds with Hugging Face ``generate``: its sampler draws a whole batch from one generator, so here each row
samples by the Gumbel-max trick from its own generator, seeded with the completion's seed
(``w2sr.generation.base.sample_seed``): ``argmax(logits / T + Gumbel)`` (after the top-p filter) is a sample of
``softmax(logits / T)``. A completion then depends on its seed and the policy only, not on its batch, its rank or
whether the run was resumed (up to float rounding of padded batches).

Log-probabilities are recomputed with one forward over prompt + completion (left-padded prompts, right-padded
completions, position ids counted from the first real token as ``generate`` counts them), at the rollout
temperature, as TRL does. Exercised by ``pytest tests/rl/test_rollouts.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from w2sr.generation.hf import only_these_settings

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class Rollout:
    """One sampled completion of one problem."""

    prompt_ids: list[int]
    """The rendered prompt's tokens."""
    completion_ids: list[int]
    """Generated tokens up to and including the first stop token (all of them when truncated)."""
    truncated: bool
    """No stop token within ``max_new_tokens``."""


class GumbelSampler:
    """A logits processor that makes greedy search sample each row from its own generator (see the module)."""

    def __init__(self, seeds: list[int], temperature: float, top_p: float = 1.0) -> None:
        self.seeds, self.temperature, self.top_p = seeds, temperature, top_p
        self.generators: list[torch.Generator] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if not self.generators:
            self.generators = [torch.Generator(device=scores.device).manual_seed(s) for s in self.seeds]
        scores = scores.float() / self.temperature
        if self.top_p < 1.0:
            from transformers import TopPLogitsWarper

            scores = TopPLogitsWarper(self.top_p)(input_ids, scores)
        uniform = torch.stack(
            [torch.rand(scores.shape[1], generator=g, device=scores.device) for g in self.generators]
        ).clamp_(min=1e-20, max=1.0 - 1e-7)
        return scores - torch.log(-torch.log(uniform))


def split_completion(ids: list[int], stops: set[int], max_new_tokens: int) -> tuple[list[int], bool]:
    """``(tokens up to and including the first stop token, truncated)`` of a generated row."""
    ids = ids[:max_new_tokens]
    for position, token in enumerate(ids):
        if token in stops:
            return ids[: position + 1], False
    return ids, True


@torch.no_grad()
def hf_rollouts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[int]],
    seeds: list[int],
    *,
    stops: list[int],
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    batch_size: int,
) -> list[Rollout]:
    """One completion per ``(prompt, seed)`` pair, sampled by HF ``generate`` with a :class:`GumbelSampler`.

    The model is put in eval mode for the call and its mode restored (safe in the middle of training)."""
    from transformers import GenerationConfig, LogitsProcessorList

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    device = next(model.parameters()).device
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, eos_token_id=stops, pad_token_id=pad_id, do_sample=False, use_cache=True
    )
    stop_set = set(stops)
    was_training = model.training
    model.eval()
    out: list[Rollout] = []
    try:
        with only_these_settings(model):
            for start in range(0, len(prompts), batch_size):
                rows = prompts[start : start + batch_size]
                width = max(len(p) for p in rows)
                input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
                attention = torch.zeros((len(rows), width), dtype=torch.long)
                for r, ids in enumerate(rows):
                    input_ids[r, width - len(ids) :] = torch.tensor(ids)
                    attention[r, width - len(ids) :] = 1
                sampler = GumbelSampler(seeds[start : start + batch_size], temperature, top_p)
                generated = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention.to(device),
                    generation_config=config,
                    logits_processor=LogitsProcessorList([sampler]),
                )
                for r, new in enumerate(generated[:, width:].tolist()):
                    completion, truncated = split_completion(new, stop_set, max_new_tokens)
                    out.append(Rollout(list(rows[r]), completion, truncated))
    finally:
        if was_training:
            model.train()
    return out


@dataclass
class RolloutBatch:
    """Rollouts as padded tensors: prompts left-padded, completions right-padded."""

    input_ids: torch.Tensor
    """``[rows, prompt width + completion width]``: prompt and completion tokens."""
    attention_mask: torch.Tensor
    """1 on every real prompt and completion token."""
    completion_mask: torch.Tensor
    """``[rows, completion width]``: 1 on the completion's tokens up to and including its first stop token."""
    completion_ids: torch.Tensor
    """``[rows, completion width]``: the completion tokens (pad after the end)."""

    def to(self, device: torch.device | str) -> RolloutBatch:
        return RolloutBatch(
            *(t.to(device) for t in (self.input_ids, self.attention_mask, self.completion_mask, self.completion_ids))
        )


def rollout_batch(rollouts: list[Rollout], pad_id: int) -> RolloutBatch:
    """Pad a list of rollouts into a :class:`RolloutBatch` (on the CPU)."""
    prompt_width = max(len(r.prompt_ids) for r in rollouts)
    completion_width = max(1, max(len(r.completion_ids) for r in rollouts))
    rows = len(rollouts)
    input_ids = torch.full((rows, prompt_width + completion_width), pad_id, dtype=torch.long)
    attention = torch.zeros_like(input_ids)
    completion_mask = torch.zeros((rows, completion_width), dtype=torch.long)
    for r, rollout in enumerate(rollouts):
        p, c = len(rollout.prompt_ids), len(rollout.completion_ids)
        input_ids[r, prompt_width - p : prompt_width] = torch.tensor(rollout.prompt_ids)
        input_ids[r, prompt_width : prompt_width + c] = torch.tensor(rollout.completion_ids, dtype=torch.long)
        attention[r, prompt_width - p : prompt_width + c] = 1
        completion_mask[r, :c] = 1
    return RolloutBatch(input_ids, attention, completion_mask, input_ids[:, prompt_width:].clone())


def token_logps(
    model: Any, batch: RolloutBatch, temperature: float, entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(log-probabilities of the completion tokens [rows, completion width], entropies or None)`` at
    ``temperature`` (float32; padded positions hold values the completion mask removes)."""
    width = batch.completion_ids.size(1)
    positions = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
    output = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=positions,
        logits_to_keep=width + 1,
        use_cache=False,
    )
    logits = output.logits[:, :-1, :]
    logps, entropies = [], []
    for row in range(logits.size(0)):  # one row of float32 logits at a time: memory
        scaled = logits[row].float() / temperature
        norm = torch.logsumexp(scaled, dim=-1)
        logps.append(scaled.gather(-1, batch.completion_ids[row].unsqueeze(-1)).squeeze(-1) - norm)
        if entropy:
            with torch.no_grad():
                probs = torch.softmax(scaled, dim=-1)
                entropies.append(norm - (probs * scaled).sum(-1))
    return torch.stack(logps), (torch.stack(entropies) if entropy else None)
