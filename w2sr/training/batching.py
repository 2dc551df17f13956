"""Training batches planned per optimizer step: padding or packing, length grouping, exact token counts, resume.

``StepPlanSampler`` plans a whole epoch at once (the same plan on every rank, from ``seed`` and the epoch): it orders
the examples (shuffled, length-grouped, or packed into rows by first-fit decreasing), cuts micro-batches, deals them
to the ranks and groups each rank's micro-batches into optimizer steps of ``accumulate`` micro-batches (the last
step of an epoch may be shorter). Every micro-batch it yields carries ``step_tokens``: the number of target tokens of
its whole optimizer step over all micro-batches and all ranks, known exactly from the plan without communication. The
loss of a step is then ``sum of token NLLs / step_tokens`` (``w2sr.training.module.StudentModule``), as HF Trainer
does with ``num_items_in_batch``.

The sampler subclasses ``DistributedSampler`` and shards by itself, so Lightning leaves it in place; the loader is a
``DataLoader`` with ``batch_size=None`` (one sampler item = one micro-batch). ``StepDataLoader`` counts the batches it
has handed out and implements ``state_dict`` / ``load_state_dict``, which Lightning 2.6 stores in the checkpoint
(``loops.fit_loop._combined_loader``): a resumed run skips exactly the micro-batches it had already trained on.

Packed rows restart ``position_ids`` per example and carry no ``attention_mask``: transformers (>= 4.52) then builds
a block-diagonal causal mask from the position ids (``masking_utils.find_packed_sequence_indices``, any number of
rows) for eager, sdpa and flex attention. Flash-attention reads position ids as boundaries only in a batch of one
row, so for it ``BatchCollator`` flattens each micro-batch into one row and passes the varlen boundaries
(``cu_seq_lens_q/k``). Evaluation loaders deal examples to the ranks with ``EvalSampler`` (no example counted
twice). Exercised by ``pytest tests/training/test_packing.py tests/training/test_packing_attention.py
tests/training/test_resume.py tests/training/test_val_loss_ddp.py``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Iterator, Sequence, TypedDict

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from w2sr.training.examples import IGNORE_INDEX, Example

Rows = list[list[Example]]  # a micro-batch: one example per row, or several packed into a row


@dataclass(frozen=True)
class MicroBatch:
    """One micro-batch: rows of example indices (one example per row unless packed) and its step's token count."""

    rows: tuple[tuple[int, ...], ...]
    step_tokens: int
    step_end: bool


def first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Bins of example indices, each with total length <= ``capacity``; first-fit decreasing in O(n log n).

    A segment tree over the bins holds the largest free space of each subtree, so the first bin with room is found
    by descending from the root.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    size = 1
    while size < max(1, len(lengths)):
        size *= 2
    free = [0] * (2 * size)  # leaves: free space of bin j (capacity once opened, 0 while unopened)
    bins: list[list[int]] = []
    for i in order:
        need = lengths[i]
        if need > capacity:
            raise ValueError(f"example {i} has {need} tokens, more than the row capacity {capacity}")
        if free[1] >= need:
            node = 1
            while node < size:
                node = 2 * node if free[2 * node] >= need else 2 * node + 1
            j = node - size
        else:
            j = len(bins)
            bins.append([])
            node = j + size
            free[node] = capacity
        bins[j].append(i)
        free[node] -= need
        node //= 2
        while node:
            free[node] = max(free[2 * node], free[2 * node + 1])
            node //= 2
    return bins


class StepPlanSampler(DistributedSampler):
    """Yields this rank's ``MicroBatch`` es for the epoch; same plan on every rank (seed + epoch)."""

    def __init__(
        self,
        lengths: Sequence[int],
        targets: Sequence[int],
        batch_size: int,
        accumulate: int = 1,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        packing: bool = False,
        max_seq_length: int = 4096,
        group_by_length: bool = False,
    ) -> None:
        # no super().__init__: it would need an initialized process group; the fields Lightning reads are set here
        self.lengths, self.targets = list(lengths), list(targets)
        self.batch_size, self.accumulate = batch_size, max(1, accumulate)
        self.num_replicas, self.rank, self.shuffle, self.seed = num_replicas, rank, shuffle, seed
        self.packing, self.max_seq_length, self.group_by_length = packing, max_seq_length, group_by_length
        self.epoch = 0
        self.start_at = 0  # micro-batches of this epoch to skip (set when resuming)
        self._packed = first_fit_decreasing(self.lengths, max_seq_length) if packing else None
        n_rows = len(self._packed) if packing else len(self.lengths)
        global_batches = math.ceil(n_rows / batch_size)
        self.num_samples = math.ceil(global_batches / num_replicas)  # micro-batches per rank
        self.total_size = self.num_samples * num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def _rows(self, rng: random.Random) -> list[tuple[int, ...]]:
        if self._packed is not None:
            rows = [tuple(b) for b in self._packed]
            if self.shuffle:
                rng.shuffle(rows)
            return rows
        order = list(range(len(self.lengths)))
        if self.shuffle:
            rng.shuffle(order)
        if self.group_by_length:  # HF LengthGroupedSampler: sort inside random mega-batches, shuffle the batches
            mega = self.batch_size * self.num_replicas * 50
            order = [
                i
                for s in range(0, len(order), mega)
                for i in sorted(order[s : s + mega], key=lambda i: -self.lengths[i])
            ]
        return [(i,) for i in order]

    def plan(self, epoch: int | None = None) -> list[list[MicroBatch]]:
        """``plan[rank]`` = that rank's micro-batches of the epoch, in order."""
        rng = random.Random(f"{self.seed}:{self.epoch if epoch is None else epoch}")
        rows = self._rows(rng)
        batches = [tuple(rows[s : s + self.batch_size]) for s in range(0, len(rows), self.batch_size)]
        if self.group_by_length and self.shuffle:  # keep each step's ranks on similar lengths, shuffle the groups
            groups = [batches[s : s + self.num_replicas] for s in range(0, len(batches), self.num_replicas)]
            rng.shuffle(groups)
            batches = [b for g in groups for b in g]
        batches += batches[: self.total_size - len(batches)]  # every rank gets as many (DistributedSampler pads too)
        per_rank = [batches[r :: self.num_replicas] for r in range(self.num_replicas)]
        tokens = [[sum(self.targets[i] for row in b for i in row) for b in mine] for mine in per_rank]
        plan: list[list[MicroBatch]] = [[] for _ in range(self.num_replicas)]
        for start in range(0, self.num_samples, self.accumulate):
            stop = min(start + self.accumulate, self.num_samples)
            step_tokens = sum(t for mine in tokens for t in mine[start:stop])
            for r in range(self.num_replicas):
                for k in range(start, stop):
                    plan[r].append(MicroBatch(per_rank[r][k], step_tokens, k == stop - 1))
        return plan

    def __iter__(self) -> Iterator[MicroBatch]:
        start, self.start_at = self.start_at, 0
        yield from self.plan()[self.rank][start:]


@dataclass(frozen=True)
class EvalBatch:
    """One evaluation micro-batch: one example per row; ``repeats[r]`` marks a row that only evens out the ranks."""

    rows: tuple[tuple[int, ...], ...]
    repeats: tuple[bool, ...]


class EvalSampler(DistributedSampler):
    """This rank's evaluation micro-batches, in file order, as ``DistributedSampler(shuffle=False)`` deals them: every
    rank gets the same number of batches (so no rank waits in a collective), and the examples that sampler repeats to
    even out the ranks are marked, so ``BatchCollator`` gives them no targets and ``val/loss`` counts each example
    once (``pytest tests/training/test_val_loss_ddp.py``)."""

    def __init__(self, num_examples: int, batch_size: int, num_replicas: int = 1, rank: int = 0) -> None:
        # no super().__init__ (it needs a process group); Lightning keeps a DistributedSampler it finds in place
        self.n, self.batch_size, self.num_replicas, self.rank = num_examples, batch_size, num_replicas, rank
        self.shuffle, self.seed, self.epoch, self.drop_last = False, 0, 0, False
        self.per_rank = math.ceil(num_examples / num_replicas) if num_examples else 0
        self.total_size = self.per_rank * num_replicas
        self.num_samples = math.ceil(self.per_rank / batch_size)  # micro-batches per rank

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[EvalBatch]:
        mine = list(range(self.rank, self.total_size, self.num_replicas))
        for s in range(0, len(mine), self.batch_size):
            chunk = mine[s : s + self.batch_size]
            yield EvalBatch(tuple((p % self.n,) for p in chunk), tuple(p >= self.n for p in chunk))


class PlannedDataset(Dataset):
    """Maps a ``MicroBatch`` to its examples (rows of examples) and step metadata."""

    def __init__(self, examples: Sequence[Example]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, item: MicroBatch | EvalBatch) -> tuple[Rows, MicroBatch | EvalBatch]:
        return [[self.examples[i] for i in row] for row in item.rows], item


# flash-attention varlen boundaries, as transformers' DataCollatorWithFlattening(return_flash_attn_kwargs=True) makes
# them; w2sr.training.losses passes them on to the model (they reach every attention layer)
class Batch(TypedDict, total=False):
    """A collated micro-batch (:class:`BatchCollator`): what the student's steps and the losses read."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    """``input_ids`` with -100 where no loss is taken (prompts, padding, each example's first token)."""
    attention_mask: torch.Tensor
    """padded rows: 1 on tokens, 0 on padding."""
    position_ids: torch.Tensor
    """packed rows: positions restarting at each example (no attention mask)."""
    cu_seq_lens_q: torch.Tensor
    """flash-attention's flat layout (also ``cu_seq_lens_k``, ``max_length_q``, ``max_length_k``)."""
    cu_seq_lens_k: torch.Tensor
    max_length_q: int
    max_length_k: int
    keys: list[str]
    """each example's ``"<problem id>#<sample>"``."""
    num_tokens: int
    num_examples: int
    num_targets: int
    step_tokens: int
    """target tokens of the whole optimizer step (all micro-batches, all ranks): the loss's denominator."""
    step_end: bool
    """this micro-batch ends an optimizer step."""


FLASH_KWARGS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


class BatchCollator:
    """Rows of examples -> tensors. One example per row: right padding with an attention mask. Several (packed),
    laid out for the attention implementation (``w2sr.runtime.preflight.packed_layout``):

    - ``rows`` (sdpa, eager, flex_attention, sdpa_varlen): one row per packed row, ``position_ids`` restarting per
      example, no attention mask; transformers builds the block-diagonal (document) mask from the position ids for
      any number of rows, ``sdpa_varlen`` attends per segment.
    - ``flat`` (flash-attention): the whole micro-batch flattened into one row without padding, by transformers'
      ``DataCollatorWithFlattening``, with the varlen boundaries ``cu_seq_lens_q/k`` and ``max_length_q/k``:
      flash-attention reads restarting position ids as boundaries only in a batch of one row.

    The first label of every example is -100, so no token is predicted across an example boundary. Rows an
    ``EvalBatch`` marks as repeats get no targets."""

    def __init__(self, pad_id: int, packing: bool = False, layout: str = "rows") -> None:
        if layout not in ("rows", "flat"):
            raise ValueError(f"layout must be rows or flat, not {layout!r}")
        self.pad_id, self.packing, self.layout = pad_id, packing, layout

    def __call__(self, item: tuple[Rows, MicroBatch | EvalBatch | None]) -> Batch:
        rows, meta = item
        packed = self.packing or any(len(row) > 1 for row in rows)
        repeats = meta.repeats if isinstance(meta, EvalBatch) else (False,) * len(rows)
        counted = [e for row, rep in zip(rows, repeats) if not rep for e in row]
        batch = self._flat(rows) if packed and self.layout == "flat" else self._rows(rows, packed, repeats)
        batch.update(
            keys=[e.key for row in rows for e in row],
            num_tokens=int(sum(len(e.input_ids) for row in rows for e in row)),
            num_examples=len(counted),
            num_targets=sum(e.num_targets for e in counted),
        )
        if isinstance(meta, MicroBatch):
            batch["step_tokens"] = meta.step_tokens
            batch["step_end"] = meta.step_end
        return batch

    @staticmethod
    def _flat(rows: Rows) -> Batch:
        from transformers import DataCollatorWithFlattening

        flatten = DataCollatorWithFlattening(
            return_flash_attn_kwargs=True, return_position_ids=True, separator_id=IGNORE_INDEX
        )
        out = flatten([{"input_ids": e.input_ids, "labels": e.labels} for row in rows for e in row])
        return {key: out[key] for key in ("input_ids", "labels", "position_ids", *FLASH_KWARGS)}

    def _rows(self, rows: Rows, packed: bool, repeats: tuple[bool, ...]) -> Batch:
        width = max(sum(len(e.input_ids) for e in row) for row in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        positions = torch.zeros((len(rows), width), dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            at = 0
            for e in row:
                n = len(e.input_ids)
                input_ids[r, at : at + n] = torch.tensor(e.input_ids)
                if not repeats[r]:
                    labels[r, at : at + n] = torch.tensor(e.labels)
                    labels[r, at] = IGNORE_INDEX
                positions[r, at : at + n] = torch.arange(n)
                attention[r, at : at + n] = 1
                at += n
            positions[r, at:] = torch.arange(width - at)  # the pad tail is a segment of its own
        batch = Batch(input_ids=input_ids, labels=labels)
        if packed:
            batch["position_ids"] = positions
        else:
            batch["attention_mask"] = attention
        return batch


class PadCollator:
    """Right-pads a list of examples; padded labels are -100 and padded attention is 0.

    >>> collate = PadCollator(pad_id=0)
    >>> batch = collate([Example([5, 6, 7], [-100, 6, 7], "p1"), Example([8, 9], [-100, 9], "p2")])
    >>> batch["input_ids"]
    tensor([[5, 6, 7],
            [8, 9, 0]])
    >>> batch["labels"]
    tensor([[-100,    6,    7],
            [-100,    9, -100]])
    >>> batch["attention_mask"]
    tensor([[1, 1, 1],
            [1, 1, 0]])
    """

    def __init__(self, pad_id: int) -> None:
        self.collate = BatchCollator(pad_id)

    def __call__(self, examples: list[Example]) -> Batch:
        return self.collate(([[e] for e in examples], None))


class StepDataLoader(DataLoader):
    """A ``DataLoader`` over a ``StepPlanSampler`` whose position in the epoch is saved in Lightning checkpoints."""

    def __init__(
        self,
        dataset: PlannedDataset,
        sampler: StepPlanSampler,
        collate_fn: BatchCollator,
        num_workers: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            dataset,
            batch_size=None,
            sampler=sampler,
            collate_fn=collate_fn,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
            **kwargs,
        )
        self.consumed = 0
        self._resume_at = 0

    def __iter__(self) -> Iterator[Batch]:
        sampler: StepPlanSampler = self.sampler  # type: ignore[assignment]
        self.consumed, sampler.start_at, self._resume_at = self._resume_at, self._resume_at, 0
        for batch in super().__iter__():
            self.consumed += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        sampler: StepPlanSampler = self.sampler  # type: ignore[assignment]
        return {
            "epoch": sampler.epoch,
            "consumed": self.consumed,
            "num_batches": len(sampler),
            "seed": sampler.seed,
            "num_replicas": sampler.num_replicas,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        sampler: StepPlanSampler = self.sampler  # type: ignore[assignment]
        if state.get("num_batches") != len(sampler) or state.get("num_replicas") != sampler.num_replicas:
            from lightning.pytorch.utilities import rank_zero_warn

            rank_zero_warn(
                "w2sr: the checkpoint's data plan differs from this run's (other data, batch size or "
                "devices): resuming at the start of the epoch"
            )
            return
        sampler.set_epoch(int(state["epoch"]))
        consumed = int(state["consumed"])
        self._resume_at = consumed if consumed < len(sampler) else 0
