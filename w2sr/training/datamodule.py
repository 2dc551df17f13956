"""TraceDataModule: verified weak traces -> tokenized, prompt-masked training batches for the student.

Each example is the trace's own chat messages rendered with the tokenizer's chat template (exactly what the teacher
saw) followed by the teacher's completion and the template's end-of-turn token. Labels are built at tokenization:
prompt tokens are -100, completion and end-of-turn tokens equal their input ids. The variant picks the paper's
training set (``all`` = W2SR, ``correct`` = W2SR-P, ``incorrect`` = W2SR-N). Validation problems are split off by
problem id, so no problem has traces on both sides.

A trace the teacher cut at its token limit (``finish_reason: length``) is kept without an end-of-turn token, cut to
``max_seq_length`` where longer (``truncated: keep``, the paper's data) or dropped; other traces over it are dropped or
cut (``too_long``). Batches are planned per optimizer step (``w2sr.training.batching``): padded, length-grouped or
packed, with the step's exact target-token count for a token-weighted loss, and resumable mid-epoch. Tokenized files
are cached (``w2sr.training.token_cache``). Exercised by ``w2sr fit --config lightning_configs/quickstart/fit.yaml`` and
``pytest tests/training/test_data.py tests/training/test_packing.py``.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import TYPE_CHECKING, Any, Literal

from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader

from w2sr.records.jsonl import InputError
from w2sr.records.options import check_choice, check_range
from w2sr.records.traces import Trace, Variant, read_traces, select_variant
from w2sr.runtime.preflight import packed_layout
from w2sr.training.batching import (
    BatchCollator,
    EvalSampler,
    PadCollator,
    PlannedDataset,
    StepDataLoader,
    StepPlanSampler,
)
from w2sr.training.examples import IGNORE_INDEX, Example, in_validation, render_trace, tokenize_trace
from w2sr.training.token_cache import Record, cache_key, cached

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

DEFAULT_CACHE_DIR = "~/.cache/w2sr/tokenized"

__all__ = [
    "IGNORE_INDEX",
    "Example",
    "PadCollator",
    "TraceDataModule",
    "in_validation",
    "render_trace",
    "tokenize_trace",
]


class TraceDataModule(LightningDataModule):
    """Verified teacher traces for supervised fine-tuning of the student."""

    def __init__(
        self,
        train_file: str | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        predict_file: str | None = None,
        variant: Variant = "all",
        val_fraction: float = 0.05,
        tokenizer: str | None = None,
        use_chat_template: bool = True,
        max_seq_length: int = 4096,
        batch_size: int = 8,
        packing: bool = False,
        group_by_length: bool = False,
        truncated: Literal["keep", "drop"] = "keep",
        too_long: Literal["drop", "truncate"] = "drop",
        cache_dir: str | None = DEFAULT_CACHE_DIR,
        num_workers: int | None = None,
        pin_memory: bool = True,
        seed: int = 0,
        trust_remote_code: bool = False,
    ) -> None:
        """
        Args:
            train_file: verified traces (``w2sr verify`` output); unverified traces work for ``variant: all``.
            val_file: separate validation traces; otherwise ``val_fraction`` of the problems are held out. The
                held-out problems are chosen before the variant filter, so W2SR, W2SR-P and W2SR-N runs are
                validated on the same problems (``val/loss`` over all their traces).
            test_file: traces for ``w2sr test`` (``test/loss``).
            predict_file: traces scored by ``w2sr predict`` (per-trace NLL); defaults to ``train_file``.
            variant: ``all`` (W2SR), ``correct`` (W2SR-P) or ``incorrect`` (W2SR-N): the training traces.
            val_fraction: the share of the problems held out for validation when there is no ``val_file``, in
                [0, 1) (the split is by problem id, stable across runs with the same ``seed``).
            tokenizer: linked from the model's tokenizer by the CLI.
            use_chat_template: render prompts with the tokenizer's chat template, as at generation (false: raw
                text, for base models).
            max_seq_length: the longest example (or packed row) in tokens.
            batch_size: examples per micro-batch (per device); with ``packing``, packed rows per micro-batch.
            packing: pack several examples into rows of at most ``max_seq_length`` tokens (first-fit decreasing);
                position ids restart per example and no token attends across examples.
            group_by_length: without packing, batch examples of similar length (less padding; HF's
                ``group_by_length``).
            truncated: traces the teacher cut at its token limit (``finish_reason: length``): ``keep`` trains on
                their tokens without an end-of-turn token (the paper's data: they are among W2SR-N), cut to
                ``max_seq_length`` where longer whatever ``too_long`` says (the paper's cutoff), ``drop`` skips.
            too_long: other examples over ``max_seq_length``: ``drop`` (default: every trained token is as the
                teacher wrote it) or ``truncate`` (cut to ``max_seq_length``, no end-of-turn).
            cache_dir: tokenized files are cached here (null disables the cache).
            num_workers: loader processes; default 2 per CUDA device (collation overlaps the GPU step; fewer when
                the machine has few cores), 0 on the CPU, where workers compete with the training threads.
            pin_memory: pinned host batches for asynchronous copies to a CUDA device (ignored elsewhere).
            seed: the validation split's and the training order's seed.
            trust_remote_code: linked from ``model.trust_remote_code`` by the CLI.
        """
        super().__init__()
        self.save_hyperparameters()
        check_choice(variant, Variant, "data.variant")
        check_choice(truncated, Literal["keep", "drop"], "data.truncated")
        check_choice(too_long, Literal["drop", "truncate"], "data.too_long")
        check_range(val_fraction, "data.val_fraction", 0, 1)
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.train_examples: list[Example] = []
        self.val_examples: list[Example] = []
        self.test_examples: list[Example] = []
        self.predict_examples: list[Example] = []
        self.val_traces: list[Trace] = []
        self.stats: dict[str, int] = {}
        self.cache_hits: list[bool] = []

    def load_tokenizer(self) -> Any:
        if self.tokenizer is None:
            from w2sr.training.loading import data_tokenizer

            self.tokenizer = data_tokenizer(self.hparams.tokenizer, self.hparams.trust_remote_code)
        return self.tokenizer

    # ------------------------------------------------------------------------------------------ tokenization
    def _record(self, trace: Trace) -> Record:
        """One trace -> ``(ids, prompt length, status)`` under the truncation options."""
        hp = self.hparams
        if trace.finish_reason == "length" and hp.truncated == "drop":
            return [], 0, "dropped_truncated"
        example = tokenize_trace(self.load_tokenizer(), trace, hp.use_chat_template)
        ids, prompt_length = example.input_ids, example.prompt_length
        status = "kept_truncated" if trace.finish_reason == "length" else "ok"
        if len(ids) > hp.max_seq_length:
            if (hp.too_long == "drop" and status == "ok") or prompt_length + 1 >= hp.max_seq_length:
                return [], 0, "dropped_too_long"  # a kept truncated trace is cut (prompt + 4,096 > 4,096 in the paper)
            ids, status = ids[: hp.max_seq_length], status if status != "ok" else "truncated_too_long"
        return ids, prompt_length, status

    def _records(self, path: str, traces: list[Trace]) -> list[Record]:
        """The records of every trace of a file, in file order, from the token cache when possible."""
        hp = self.hparams
        tokenizer = self.load_tokenizer()
        options = {k: hp[k] for k in ("use_chat_template", "max_seq_length", "truncated", "too_long")} | {"cut": 1}
        trainer = self.trainer
        distributed = trainer is not None and trainer.world_size > 1
        records, hit = cached(
            path,
            lambda: [self._record(t) for t in traces],
            cache_key(path, tokenizer, options) if hp.cache_dir else "",
            hp.cache_dir,
            barrier=(lambda: trainer.strategy.barrier("w2sr_tokenize")) if distributed else None,
            is_rank_zero=trainer is None or trainer.is_global_zero,
        )
        if len(records) != len(traces):  # a stale or foreign cache file: never train on misaligned tokens
            records, hit = [self._record(t) for t in traces], False
        self.cache_hits.append(hit)
        return records

    def _examples(self, traces: list[Trace], records: dict[int, Record], split: str) -> list[Example]:
        counts: Counter[str] = Counter()
        examples = []
        for trace in traces:
            ids, prompt_len, status = records[id(trace)]
            counts[status] += 1
            if not status.startswith("dropped"):
                examples.append(
                    Example(
                        ids,
                        [IGNORE_INDEX] * prompt_len + ids[prompt_len:],
                        trace.problem.id,
                        trace.key,
                        prompt_len,
                    )
                )
        for status in ("kept_truncated", "dropped_truncated", "dropped_too_long", "truncated_too_long"):
            self.stats[f"{split}_{status}"] = counts[status]
        dropped = counts["dropped_too_long"]
        if dropped:
            rank_zero_warn(
                f"w2sr: dropped {dropped} {split} traces longer than max_seq_length="
                f"{self.hparams.max_seq_length} (data.too_long: drop)"
            )
        return examples

    def _tokenize_file(self, path: str, traces: list[Trace]) -> dict[int, Record]:
        return {id(t): r for t, r in zip(traces, self._records(path, traces))}

    def _read(self, path: str, verified: bool) -> list[Trace]:
        return read_traces(path, verified=verified)

    def _setup_fit(self) -> None:
        hp = self.hparams
        if not hp.train_file:
            raise InputError("no training traces: set data.train_file", field="data.train_file")
        traces = self._read(hp.train_file, verified=hp.variant != "all")
        records = self._tokenize_file(hp.train_file, traces)
        if hp.val_file:
            val_traces = self._read(hp.val_file, verified=False)
            records.update(self._tokenize_file(hp.val_file, val_traces))
            train, val = traces, val_traces
        else:
            val = [t for t in traces if in_validation(t.problem.id, hp.val_fraction, hp.seed)]
            train = [t for t in traces if not in_validation(t.problem.id, hp.val_fraction, hp.seed)]
        train = select_variant(train, hp.variant)
        if not train:
            raise InputError(f"no training traces in variant '{hp.variant}'", path=hp.train_file, field="correct")
        self.val_traces = val
        self.train_examples = self._examples(train, records, "train")
        self.val_examples = self._examples(val, records, "val")
        if not self.train_examples:
            raise InputError("no training examples left after the split and the length filter", path=hp.train_file)
        self.stats.update(
            train_traces=len(train),
            val_traces=len(val),
            train_problems=len({t.problem.id for t in train}),
            val_problems=len({t.problem.id for t in val}),
            train_examples=len(self.train_examples),
            val_examples=len(self.val_examples),
        )
        rank_zero_info(f"w2sr: {hp.variant} traces: {self.stats}")

    def _setup_eval(self, path: str) -> list[Example]:
        traces = self._read(path, verified=False)
        return self._examples(traces, self._tokenize_file(path, traces), "eval")

    def setup(self, stage: str) -> None:
        hp = self.hparams
        if stage in ("fit", "validate") and not self.train_examples:
            self._setup_fit()
        elif stage == "test" and not self.test_examples:
            if not hp.test_file:
                raise InputError("no test traces: set data.test_file", field="data.test_file")
            self.test_examples = self._setup_eval(hp.test_file)
        elif stage == "predict" and not self.predict_examples:
            path = hp.predict_file or hp.train_file
            if not path:
                raise InputError("no traces to score: set data.predict_file", field="data.predict_file")
            self.predict_examples = self._setup_eval(path)

    def validation_problems(self) -> list[Trace]:
        """One trace per held-out problem (its prompt messages and gold), for reasoning-accuracy checks."""
        seen: dict[str, Trace] = {}
        for trace in self.val_traces:
            seen.setdefault(trace.problem.id, trace)
        return list(seen.values())

    # ------------------------------------------------------------------------------------------- loaders
    def loader_options(self) -> dict[str, Any]:
        """``num_workers`` and ``pin_memory`` for this run's device (see the options)."""
        import torch

        trainer = self.trainer
        cuda = trainer is not None and trainer.strategy.root_device.type == "cuda"
        workers = self.hparams.num_workers
        if workers is None:
            per_device = (os.cpu_count() or 1) // max(1, torch.cuda.device_count()) - 1
            workers = max(0, min(2, per_device)) if cuda else 0
        return {"num_workers": workers, "pin_memory": bool(self.hparams.pin_memory and cuda)}

    def _loader(self, examples: list[Example]) -> DataLoader:
        pad_id = self.load_tokenizer().pad_token_id
        options = self.loader_options()
        return DataLoader(
            examples,
            batch_size=self.hparams.batch_size,
            shuffle=False,
            collate_fn=PadCollator(pad_id),
            persistent_workers=options["num_workers"] > 0,
            **options,
        )

    def _eval_loader(self, examples: list[Example]) -> DataLoader:
        """``val/loss`` / ``test/loss`` batches: dealt to the ranks as Lightning's ``DistributedSampler`` would, but
        the examples it repeats to even out the ranks count nothing (``EvalSampler``)."""
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = EvalSampler(len(examples), self.hparams.batch_size, num_replicas=world, rank=rank)
        options = self.loader_options()
        return DataLoader(
            PlannedDataset(examples),
            batch_size=None,
            sampler=sampler,
            collate_fn=BatchCollator(self.load_tokenizer().pad_token_id),
            persistent_workers=options["num_workers"] > 0,
            **options,
        )

    def packed_layout(self) -> str:
        """How packed rows are laid out for the model's attention (``rows``, or ``flat`` for flash-attention), from
        the attached module's ``attn_implementation``; exit 2 for one that cannot keep packed examples apart."""
        module = getattr(self.trainer, "lightning_module", None) if self.trainer is not None else None
        hparams = getattr(module, "hparams", None) or {}
        return packed_layout(hparams.get("attn_implementation")) if self.hparams.packing else "rows"

    def train_sampler(self) -> StepPlanSampler:
        """This rank's plan of micro-batches per optimizer step (accumulation and ranks from the trainer)."""
        hp = self.hparams
        trainer = self.trainer
        accumulate, world, rank = (
            (trainer.accumulate_grad_batches, trainer.world_size, trainer.global_rank)
            if trainer is not None
            else (1, 1, 0)
        )
        examples = self.train_examples
        # the order follows the run's seed (seed_everything sets PL_GLOBAL_SEED, as Lightning's DistributedSampler
        # uses it) and data.seed: every rank and a resumed run plan the same batches
        seed = hp.seed * 2**32 + int(os.environ.get("PL_GLOBAL_SEED", 0))
        return StepPlanSampler(
            [len(e.input_ids) for e in examples],
            [e.num_targets for e in examples],
            batch_size=hp.batch_size,
            accumulate=accumulate,
            num_replicas=world,
            rank=rank,
            shuffle=True,
            seed=seed,
            packing=hp.packing,
            max_seq_length=hp.max_seq_length,
            group_by_length=hp.group_by_length,
        )

    def train_dataloader(self) -> StepDataLoader:
        collate = BatchCollator(
            self.load_tokenizer().pad_token_id, packing=self.hparams.packing, layout=self.packed_layout()
        )
        return StepDataLoader(
            PlannedDataset(self.train_examples), self.train_sampler(), collate, **self.loader_options()
        )

    def val_dataloader(self) -> DataLoader | list:
        return self._eval_loader(self.val_examples) if self.val_examples else []

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_examples)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_examples)
