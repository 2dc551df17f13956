"""TraceDataModule: verified weak traces -> tokenized, prompt-masked training batches for the student.

Each example is the trace's own chat messages rendered with the tokenizer's chat template (exactly what the teacher
saw) followed by the teacher's completion and the template's end-of-turn token. Labels are built at tokenization:
prompt tokens are -100, completion and end-of-turn tokens equal their input ids. The variant picks the paper's
training set (``all`` = W2SR, ``correct`` = W2SR-P, ``incorrect`` = W2SR-N). Validation problems are split off by
problem id, so no problem has traces on both sides. Exercised by ``w2sr fit --config lightning_configs/quickstart.yaml``
and ``pytest tests/test_data.py``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader

from w2sr.jsonl import InputError
from w2sr.prompts import render_conversation
from w2sr.traces import Trace, Variant, read_traces, select_variant

IGNORE_INDEX = -100


@dataclass
class Example:
    """One tokenized training example."""

    input_ids: list[int]
    labels: list[int]
    problem_id: str
    key: str = ""  # "<problem id>#<sample>", carried into batches for per-trace outputs


def tokenize_trace(tokenizer: Any, trace: Trace, use_chat_template: bool = True) -> Example:
    """Prompt ids + response ids, with the prompt masked.

    Prompt and response are tokenized separately and concatenated, so the prompt ids are exactly the ones the model
    is given at generation time (no merge across the boundary can shift the mask).
    """
    try:
        prompt, response = render_conversation(tokenizer, trace.prompt, trace.completion, use_chat_template)
    except ValueError as err:
        raise InputError(str(err), field="data.use_chat_template") from None
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    return Example(input_ids=prompt_ids + response_ids, labels=[IGNORE_INDEX] * len(prompt_ids) + response_ids,
                   problem_id=trace.problem.id, key=f"{trace.problem.id}#{trace.sample}")


def in_validation(problem_id: str, fraction: float, seed: int) -> bool:
    """A stable, platform-independent split by problem id (a hash, not Python's salted ``hash``)."""
    digest = hashlib.sha256(f"{seed}:{problem_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


class PadCollator:
    """Right-pads a batch; padded labels are -100 and padded attention is 0."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, examples: list[Example]) -> dict[str, Any]:
        width = max(len(e.input_ids) for e in examples)
        input_ids = torch.full((len(examples), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((len(examples), width), dtype=torch.long)
        for row, e in enumerate(examples):
            input_ids[row, :len(e.input_ids)] = torch.tensor(e.input_ids)
            labels[row, :len(e.labels)] = torch.tensor(e.labels)
            attention[row, :len(e.input_ids)] = 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention,
                "keys": [e.key for e in examples]}


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
        num_workers: int = 0,
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
            tokenizer: linked from the model's tokenizer by the CLI.
            max_seq_length: longer examples are dropped (and counted), never truncated: a cut completion would teach
                the student not to stop.
        """
        super().__init__()
        self.save_hyperparameters()
        self.tokenizer: Any = None
        self.train_examples: list[Example] = []
        self.val_examples: list[Example] = []
        self.test_examples: list[Example] = []
        self.predict_examples: list[Example] = []
        self.val_traces: list[Trace] = []
        self.stats: dict[str, int] = {}

    def load_tokenizer(self) -> Any:
        if self.tokenizer is None:
            from w2sr.model import load_tokenizer

            if not self.hparams.tokenizer:
                raise InputError("no tokenizer: set data.tokenizer or model.model_name_or_path", field="data.tokenizer")
            self.tokenizer = load_tokenizer(self.hparams.tokenizer, self.hparams.trust_remote_code)
        return self.tokenizer

    def _read(self, path: str, verified: bool) -> list[Trace]:
        return read_traces(path, verified=verified)

    def _tokenize(self, traces: list[Trace], split: str) -> list[Example]:
        tokenizer = self.load_tokenizer()
        examples = [tokenize_trace(tokenizer, t, self.hparams.use_chat_template) for t in traces]
        kept = [e for e in examples if len(e.input_ids) <= self.hparams.max_seq_length]
        self.stats[f"{split}_dropped_too_long"] = len(examples) - len(kept)
        if len(kept) < len(examples):
            rank_zero_warn(f"w2sr: dropped {len(examples) - len(kept)} {split} traces longer than "
                           f"max_seq_length={self.hparams.max_seq_length}")
        return kept

    def _setup_fit(self) -> None:
        hp = self.hparams
        if not hp.train_file:
            raise InputError("no training traces: set data.train_file", field="data.train_file")
        traces = self._read(hp.train_file, verified=hp.variant != "all")
        if hp.val_file:
            train, val = traces, self._read(hp.val_file, verified=False)
        else:
            val = [t for t in traces if in_validation(t.problem.id, hp.val_fraction, hp.seed)]
            train = [t for t in traces if not in_validation(t.problem.id, hp.val_fraction, hp.seed)]
        train = select_variant(train, hp.variant)
        if not train:
            raise InputError(f"no training traces in variant '{hp.variant}'", path=hp.train_file, field="correct")
        self.val_traces = val
        self.train_examples = self._tokenize(train, "train")
        self.val_examples = self._tokenize(val, "val")
        if not self.train_examples:
            raise InputError("no training examples left after the split and the length filter", path=hp.train_file)
        self.stats.update(train_traces=len(train), val_traces=len(val),
                          train_problems=len({t.problem.id for t in train}),
                          val_problems=len({t.problem.id for t in val}))
        rank_zero_info(f"w2sr: {hp.variant} traces: {self.stats}")

    def setup(self, stage: str) -> None:
        hp = self.hparams
        if stage in ("fit", "validate") and not self.train_examples:
            self._setup_fit()
        elif stage == "test" and not self.test_examples:
            if not hp.test_file:
                raise InputError("no test traces: set data.test_file", field="data.test_file")
            self.test_examples = self._tokenize(self._read(hp.test_file, verified=False), "test")
        elif stage == "predict" and not self.predict_examples:
            path = hp.predict_file or hp.train_file
            if not path:
                raise InputError("no traces to score: set data.predict_file", field="data.predict_file")
            self.predict_examples = self._tokenize(self._read(path, verified=False), "predict")

    def validation_problems(self) -> list[Trace]:
        """One trace per held-out problem (its prompt messages and gold), for reasoning-accuracy checks."""
        seen: dict[str, Trace] = {}
        for trace in self.val_traces:
            seen.setdefault(trace.problem.id, trace)
        return list(seen.values())

    def _loader(self, examples: list[Example], shuffle: bool) -> DataLoader:
        pad_id = self.load_tokenizer().pad_token_id
        return DataLoader(examples, batch_size=self.hparams.batch_size, shuffle=shuffle,
                          num_workers=self.hparams.num_workers, collate_fn=PadCollator(pad_id),
                          persistent_workers=self.hparams.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_examples, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val_examples, shuffle=False) if self.val_examples else []

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_examples, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_examples, shuffle=False)
