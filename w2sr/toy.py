"""The embedded default: a toy reasoning task, a deliberately weak programmatic teacher and a tiny offline model.

Everything ``make quickstart`` needs without network access: chained integer arithmetic problems ("Compute
7 + 5 - 3 + 8.", three steps) with step-by-step solutions ending in ``\\boxed{}``, a seeded teacher that slips on
arithmetic,
forgets the box, rambles or stops early, a byte-level BPE tokenizer (digits split individually) with a ChatML chat
template, and a random-init Llama small enough to be fine-tuned from scratch on 2 CPU cores in about a minute.
Exercised by ``python -m w2sr.toy data --output data/toy``, ``python -m w2sr.toy model --output .cache/w2sr-tiny``
and ``pytest tests/cli/test_toy.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from w2sr.records import prompts
from w2sr.records.jsonl import OutputExistsError, write_jsonl
from w2sr.records.problems import Problem
from w2sr.records.prompts import BOXED_INSTRUCTION, TEMPLATES

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

SOURCE = "toy-arith"
SYSTEM_PROMPT = TEMPLATES["qwen-base"].system  # the paper's prompt, owned by w2sr.records.prompts
USER_SUFFIX = "\n" + BOXED_INSTRUCTION
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
EOS_TOKEN, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [EOS_TOKEN, IM_START, IM_END]

# "Compute 7 + 5 - 3 + 8.": three chained operations on single digits, every intermediate result non-negative.
# Tuned: 2-digit operands (10-99) were not learnable from scratch in the CPU budget (<5% after 600-800 steps).
N_OPERANDS = 4
FIRST_RANGE, REST_RANGE = (1, 9), (1, 9)  # inclusive ranges of the first and the other operands
TEST_SHARE = 10  # a problem belongs to the test split when sha256(text) % TEST_SHARE == 0: splits never overlap
DEFAULT_N_TRAIN, DEFAULT_N_TEST = 2000, 200
# Tuned on 2 CPU cores (~0.69M parameters): full fine-tuning from random init on the error_rate=0.3 teacher's
# traces, batch 32, one-cycle LR (max 2e-3, 10% warmup, cosine): 500 steps (~70 s) -> ~50% greedy test accuracy,
# 600 steps -> ~95%. The jump is steep: give the quickstart 600 steps if the time budget allows.
DEFAULT_SIZES: dict[str, Any] = dict(
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=4,
    head_dim=32,
    max_position_embeddings=256,
)

_PROBLEM_RE = re.compile(r"Compute (\d+(?: [+-] \d+)+)\.")


def _rng(*parts: object) -> random.Random:
    """A ``random.Random`` seeded from a stable digest of ``parts`` (Python's ``hash()`` is salted per process)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _split_of(text: str) -> str:
    return "test" if int(hashlib.sha256(text.encode("utf-8")).hexdigest(), 16) % TEST_SHARE == 0 else "train"


def parse_problem(problem_text: str) -> tuple[list[int], list[str]]:
    """Operands and operators of a toy problem ("Compute 7 + 5 - 3." -> [7, 5, 3], ["+", "-"])."""
    match = _PROBLEM_RE.search(problem_text)
    if not match:
        raise ValueError(f"not a toy arithmetic problem: {problem_text!r}")
    tokens = match.group(1).split()
    return [int(t) for t in tokens[0::2]], tokens[1::2]


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b


def _random_problem(rng: random.Random) -> tuple[str, int]:
    while True:
        operands = [rng.randint(*FIRST_RANGE)] + [rng.randint(*REST_RANGE) for _ in range(N_OPERANDS - 1)]
        ops = [rng.choice("+-") for _ in range(N_OPERANDS - 1)]
        value, ok = operands[0], True
        for op, b in zip(ops, operands[1:]):
            value = _apply(value, op, b)
            ok = ok and value >= 0  # keep every intermediate non-negative
        if ok:
            expr = " ".join([str(operands[0])] + [f"{op} {b}" for op, b in zip(ops, operands[1:])])
            return f"Compute {expr}.", value


def make_problems(n: int, seed: int, split: str) -> list[Problem]:
    """``n`` distinct problems of ``split`` ("train" or "test"); the splits are disjoint for any seeds."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    rng, seen, problems = _rng("make_problems", seed, split), set(), []
    while len(problems) < n:
        text, answer = _random_problem(rng)
        if text in seen or _split_of(text) != split:
            continue
        seen.add(text)
        problems.append(
            Problem(id=f"{SOURCE}-{split}-s{seed}-{len(problems):05d}", problem=text, answer=str(answer), source=SOURCE)
        )
    return problems


def _steps(operands: Sequence[int], ops: Sequence[str], slip: tuple[int, int] | None = None) -> tuple[list[str], int]:
    """Step lines; ``slip=(step, delta)`` adds ``delta`` to that step's result, and the error propagates."""
    value, lines = operands[0], []
    for i, (op, b) in enumerate(zip(ops, operands[1:])):
        result = _apply(value, op, b) + (slip[1] if slip and slip[0] == i else 0)
        lines.append(f"Step {i + 1}: {value} {op} {b} = {result}.")
        value = result
    return lines, value


def reference_solution(problem_text: str) -> str:
    """A correct step-by-step solution ending in ``\\boxed{answer}``."""
    lines, value = _steps(*parse_problem(problem_text))
    return "\n".join(lines) + f"\nThe answer is \\boxed{{{value}}}."


_RAMBLES = [
    "Hmm, let me think about this again.",
    "Wait, I should double-check the numbers.",
    "Let me start over.",
    "Actually, maybe the order of operations matters here.",
]


class ToyTeacher:
    """A programmatic weak teacher: correct traces, except for an ``error_rate`` share of flawed ones.

    Flaws, in proportions 60/25/15: an arithmetic slip in one step that propagates to a wrong box; a trace without
    any box (the answer stated in words, or rambling); a trace cut short. Deterministic given
    ``(seed, problem_text, sample)``. Teacher accuracy is about ``1 - error_rate``.
    """

    def __init__(self, error_rate: float = 0.3, seed: int = 0) -> None:
        if not 0.0 <= error_rate <= 1.0:
            raise ValueError(f"error_rate must be in [0, 1], got {error_rate}")
        self.error_rate, self.seed = error_rate, seed
        self.name = f"toy-teacher(error_rate={error_rate})"

    def solve(self, problem_text: str, sample: int = 0) -> str:
        operands, ops = parse_problem(problem_text)
        rng = _rng("ToyTeacher", self.seed, sample, problem_text)
        if rng.random() >= self.error_rate:
            return reference_solution(problem_text)
        kind = rng.random()
        if kind < 0.6:  # arithmetic slip, propagated
            step = rng.randrange(len(ops))
            delta = rng.choice([-10, -2, -1, 1, 2, 10])
            lines, value = _steps(operands, ops, slip=(step, delta))
            return "\n".join(lines) + f"\nThe answer is \\boxed{{{value}}}."
        lines, value = _steps(operands, ops)
        if kind < 0.85:  # no box: answer in words, or rambling
            if rng.random() < 0.5:
                return "\n".join(lines) + f"\nThe answer is {value}."
            return "\n".join(lines[:1] + [rng.choice(_RAMBLES)] + lines[1:])
        full = "\n".join(lines) + f"\nThe answer is \\boxed{{{value}}}."
        return full[: rng.randrange(5, full.index("\\boxed"))]  # cut short before the box


def write_toy_data(
    output_dir: str,
    seed: int = 0,
    n_train: int = DEFAULT_N_TRAIN,
    n_test: int = DEFAULT_N_TEST,
    overwrite: bool = False,
) -> None:
    """Write ``train.jsonl`` and ``test.jsonl`` problem records; refuse to replace them unless ``overwrite``."""
    out = Path(output_dir)
    paths = {split: out / f"{split}.jsonl" for split in ("train", "test")}
    for path in paths.values():  # check both before writing either
        if path.exists() and not overwrite:
            raise OutputExistsError("output already exists; pass --overwrite to replace it", path=path)
    for split, n in (("train", n_train), ("test", n_test)):
        write_jsonl(paths[split], (p.to_dict() for p in make_problems(n, seed, split)), overwrite=overwrite)


def render_prompt(tokenizer: PreTrainedTokenizerFast, problem_text: str) -> str:
    """The teacher/student prompt for one problem, rendered by the chat template with the generation prompt."""
    return prompts.render_prompt(tokenizer, prompts.build_messages(problem_text))


def default_corpus(seed: int = 0, n: int = 300) -> list[str]:
    """Texts the default tokenizer is trained on: chat-rendered prompts and teacher traces of toy problems."""
    teacher = ToyTeacher(error_rate=0.5, seed=seed)
    texts = []
    for p in make_problems(n, seed, "train"):
        user = p.problem + USER_SUFFIX
        texts.append(
            f"{IM_START}system\n{SYSTEM_PROMPT}{IM_END}\n{IM_START}user\n{user}{IM_END}\n"
            f"{IM_START}assistant\n{teacher.solve(p.problem)}{IM_END}\n"
        )
    return texts + _RAMBLES


def build_tokenizer(texts: Iterable[str], vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE in-process (digits always single tokens); return a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        padding_side="left",
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        extra_special_tokens=[IM_START, IM_END],
        model_max_length=DEFAULT_SIZES["max_position_embeddings"],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_model(
    output_dir: str,
    *,
    arch: str = "llama",
    seed: int = 0,
    overwrite: bool = False,
    corpus: Iterable[str] | None = None,
    eos_tokens: Sequence[str] = (IM_END, EOS_TOKEN),
    **sizes: Any,
) -> str:
    """Save a random-init causal LM, its tokenizer and generation config under ``output_dir``; return the path.

    ``sizes`` override :data:`DEFAULT_SIZES` (``LlamaConfig`` fields). Only ``arch="llama"`` is supported: the
    tokenizer reloads through ``AutoTokenizer`` with identical ids under that model type. ``corpus`` (texts of
    another toy task) trains the tokenizer instead of :func:`default_corpus`; the same corpus gives the same ids.
    ``eos_tokens``: the config's and generation config's EOS tokens (``("<|endoftext|>",)`` gives a base whose only
    EOS is ``<|endoftext|>`` while its turns end with ``<|im_end|>``, as Qwen2.5 base models).
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    if arch != "llama":
        raise ValueError(f"unsupported arch {arch!r}; only 'llama' is supported")
    out = Path(output_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise OutputExistsError("output already exists; pass --overwrite to replace it", path=out)
    tokenizer = build_tokenizer(default_corpus() if corpus is None else corpus)  # same tokenizer for every seed
    eot = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    ids = [tokenizer.convert_tokens_to_ids(token) for token in eos_tokens]
    eos = ids[0] if len(ids) == 1 else ids  # one id is written as an int, as in Qwen2.5 base configs
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=eos,
        pad_token_id=eot,
        **{**DEFAULT_SIZES, **sizes},
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=eot, bos_token_id=None, do_sample=False)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m w2sr.toy data --output data/toy`` | ``python -m w2sr.toy model --output .cache/w2sr-tiny``."""
    parser = argparse.ArgumentParser(prog="python -m w2sr.toy", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data", help="write the toy train/test problem files")
    data.add_argument("--output", default="data/toy")
    data.add_argument("--seed", type=int, default=0)
    data.add_argument("--n-train", type=int, default=DEFAULT_N_TRAIN)
    data.add_argument("--n-test", type=int, default=DEFAULT_N_TEST)
    data.add_argument("--overwrite", action="store_true")
    model = sub.add_parser("model", help="save the tiny random-init model and its tokenizer")
    model.add_argument("--output", default=".cache/w2sr-tiny")
    model.add_argument("--seed", type=int, default=0)
    model.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.command == "data":
            write_toy_data(
                args.output, seed=args.seed, n_train=args.n_train, n_test=args.n_test, overwrite=args.overwrite
            )
            print(f"wrote {args.n_train} train and {args.n_test} test problems to {args.output}")
        else:
            print(f"saved tiny model to {build_tiny_model(args.output, seed=args.seed, overwrite=args.overwrite)}")
    except OutputExistsError as err:
        parser.exit(2, f"error: {err}\n")


if __name__ == "__main__":
    main()
