"""Loading: the student's base model and tokenizer from a hub id or a folder: dtype, 4-bit NF4 quantization (QLoRA),
LoRA adapters (new, resumed or for inference) and the one-dtype-per-unit rule of FSDP.

``model.quantization: auto`` (the default) is resolved by :func:`resolve_quantization`: the quantization an adapter
was trained with, read from its student card (``w2sr_student.json``, key ``quantization``), else ``none``; so a
QLoRA student is evaluated on the NF4 base it was trained against unless ``--model.quantization none`` is given.
``StudentModule`` (``module.py``) calls these from ``configure_model`` (training) and ``load_for_inference``
(``w2sr generate`` / ``w2sr evaluate``); ``export.py`` loads tokenizers and the dequantized NF4 base here.
Exercised by ``w2sr fit --config lightning_configs/quickstart/fit.yaml``, ``pytest tests/training/test_model.py``
and ``pytest tests/training/test_quantization_eval.py``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from w2sr.records.jsonl import InputError
from w2sr.records.options import as_options, check_range, document_fields
from w2sr.training.shards import CARD

# jsonargparse runs this block at every start: names the CLI imports anyway, no peft / modeling code (see tests)
if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase
    from transformers.utils.quantization_config import BitsAndBytesConfig

ModelDtype = Literal["auto", "bfloat16", "float16", "float32"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
QUANTIZATIONS = ("none", "nf4")  # what a base is loaded with; ``auto`` resolves to one of these
FROM_CARD = f"the adapter's {CARD}"  # the source of a quantization read from the student card


@document_fields
@dataclass
class LoraOptions:
    """LoRA adapter settings (peft); checked when made (exit 2 naming the option)."""

    r: int = 16
    """the adapter's rank (at least 1)."""
    alpha: int = 32
    """the scaling numerator: the update is scaled by ``alpha / r`` (above 0)."""
    dropout: float = 0.05
    """dropout on the adapter's input, in [0, 1)."""
    target_modules: str | list[str] = "all-linear"
    """the layers that get an adapter: ``all-linear`` (every linear layer but the LM head) or a list of module
    names."""

    def __post_init__(self) -> None:
        check_range(self.r, "model.lora.r", 1)
        check_range(self.alpha, "model.lora.alpha", 0, open_low=True)
        check_range(self.dropout, "model.lora.dropout", 0, 1)
        if not self.target_modules:
            raise InputError("name at least one module (or all-linear)", field="model.lora.target_modules")


@dataclass(frozen=True)
class ModelSpec:
    """Which model to load and how: what the loaders below read from the ``model:`` group (``StudentModule.spec``),
    frozen so that loading cannot change what the module reports."""

    model_name_or_path: str | None = None
    """hub id or local folder of the base model."""
    tokenizer_name_or_path: str | None = None
    """the tokenizer's, when not the model's."""
    adapter_path: str | None = None
    """a peft adapter to resume training from or to load for inference."""
    finetune: Literal["lora", "full"] = "lora"
    """``lora`` (adapter only; QLoRA with ``quantization: nf4``) or ``full`` (all weights)."""
    lora: LoraOptions = field(default_factory=LoraOptions)
    """the settings of a new adapter."""
    quantization: str | None = "auto"
    """``none``, ``nf4`` or ``auto`` (the adapter card's, else none: :func:`resolve_quantization`)."""
    dtype: str = "auto"
    """weight dtype of the base (:func:`resolve_dtype`)."""
    gradient_checkpointing: bool = False
    """trade compute for memory when training."""
    attn_implementation: str | None = None
    """transformers' ``attn_implementation`` (None: its default)."""
    trust_remote_code: bool = False
    """run the model's own code from the hub."""

    @classmethod
    def from_hparams(cls, hparams: Mapping[str, object]) -> ModelSpec:
        """The spec in a module's hyper-parameters (other keys are ignored; ``lora`` may come back from a checkpoint
        as a dict).

        >>> ModelSpec.from_hparams({"model_name_or_path": "m", "lora": {"r": 4}, "export_dir": "x"}).lora.r
        4
        """
        given = {f.name: hparams[f.name] for f in fields(cls) if f.name != "lora" and f.name in hparams}
        return cls(**given, lora=as_options(hparams.get("lora"), LoraOptions))


def resolve_dtype(dtype: str, full_finetune: bool = False) -> torch.dtype:
    """``auto`` = bfloat16 on a GPU that supports it, else float32; always float32 for trainable full weights.

    Weights that are trained in pure bfloat16 lose most small updates (at lr 1e-5 most weights never change):
    full fine-tuning keeps float32 master weights and gets its speed from ``trainer.precision: bf16-mixed``.
    """
    if dtype == "auto":
        if full_finetune:
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r}; choose auto or one of {sorted(DTYPES)}", field="model.dtype")
    return DTYPES[dtype]


def data_tokenizer(name_or_path: str | None, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The tokenizer a data module tokenizes with (``data.tokenizer``, which the CLI links to the model's)."""
    if not name_or_path:
        raise InputError("no tokenizer: set data.tokenizer or model.model_name_or_path", field="data.tokenizer")
    return load_tokenizer(name_or_path, trust_remote_code)


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The tokenizer, with a pad token (EOS when the tokenizer has none)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def card_quantization(adapter_path: str | None) -> str | None:
    """The quantization an adapter was trained with: ``quantization`` of its student card ``w2sr_student.json``
    (written by ``fit``'s export); None when there is no local card or it has no such key."""
    if not adapter_path:
        return None
    card = Path(adapter_path) / CARD
    if not card.is_file():
        return None
    try:
        value = json.loads(card.read_text(encoding="utf-8")).get("quantization")
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError) as err:
        raise InputError(f"malformed student card ({err})", path=card) from None
    if value is not None and value not in QUANTIZATIONS:
        raise InputError(
            f"unknown quantization {value!r} (expected one of {list(QUANTIZATIONS)})", path=card, field="quantization"
        )
    return value


def resolve_quantization(quantization: str | None, adapter_path: str | None) -> tuple[str, str]:
    """``(quantization, where it came from)``: ``none``/``nf4`` as given (``model.quantization``), or for ``auto``
    (or None) the adapter's card (:data:`FROM_CARD`), else ``none`` (``default``)."""
    if quantization in (None, "auto"):
        from_card = card_quantization(adapter_path)
        return (from_card, FROM_CARD) if from_card else ("none", "default")
    if quantization not in QUANTIZATIONS:
        raise InputError(f"unknown quantization {quantization!r}; choose auto, none or nf4", field="model.quantization")
    return quantization, "model.quantization"


def nf4_config(compute: torch.dtype) -> BitsAndBytesConfig:
    """The 4-bit NF4 setting of QLoRA (double quantization, ``compute`` dtype for matmuls and storage), shared by
    training, inference and ``w2sr export --base_quantization nf4`` so all three see the same weights."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute,
        bnb_4bit_quant_storage=compute,
    )


def load_dequantized_nf4(
    name_or_path: str, dtype: torch.dtype, trust_remote_code: bool = False, device: str | int | None = None
) -> torch.nn.Module:
    """The base as a QLoRA adapter was trained against it: loaded in NF4 exactly as :func:`load_base` loads it, then
    dequantized to ``dtype`` (plain ``nn.Linear`` layers, no quantization config left), for merging.

    ``device``: where bitsandbytes quantizes (default the current CUDA device; its CPU backend works too)."""
    from transformers import AutoModelForCausalLM

    compute = dtype if dtype != torch.float32 else torch.bfloat16  # as load_base: NF4 never computes in float32
    where = torch.cuda.current_device() if device is None else device
    model = AutoModelForCausalLM.from_pretrained(
        name_or_path,
        dtype=compute,
        quantization_config=nf4_config(compute),
        device_map={"": where},
        trust_remote_code=trust_remote_code,
    )
    return model.dequantize(dtype=dtype)


def require_model_path(spec: ModelSpec) -> str:
    """``model.model_name_or_path``, or a clear error naming it."""
    if not spec.model_name_or_path:
        raise InputError(
            "no model given: set model.model_name_or_path (a hub id or a local folder)",
            field="model.model_name_or_path",
        )
    return spec.model_name_or_path


def load_base(hp: ModelSpec, for_training: bool, under_fsdp: bool = False) -> torch.nn.Module:
    """The base causal LM of ``hp`` (dtype, quantization, attention)."""
    from transformers import AutoModelForCausalLM

    full = for_training and hp.finetune == "full"
    if full and hp.dtype in ("bfloat16", "float16"):
        rank_zero_warn(
            f"w2sr: full fine-tuning with {hp.dtype} weights loses small updates; prefer "
            "model.dtype auto/float32 with trainer.precision bf16-mixed"
        )
    # FSDP flattens each wrapped layer into one tensor of one dtype: a LoRA base under FSDP is loaded like full
    # fine-tuning's (float32, bf16 compute through the strategy's mixed precision), so it matches the adapters
    uniform = full or (for_training and under_fsdp)
    dtype = resolve_dtype(hp.dtype, uniform)
    kwargs: dict[str, object] = dict(dtype=dtype, trust_remote_code=hp.trust_remote_code)
    if hp.attn_implementation:
        kwargs["attn_implementation"] = hp.attn_implementation
    quantization, source = resolve_quantization(hp.quantization, hp.adapter_path)
    if quantization == "nf4":
        if not torch.cuda.is_available():
            origin = f" (read from {source}: the adapter was trained on an NF4 base)" if source == FROM_CARD else ""
            raise InputError(
                f"nf4 needs a CUDA GPU (bitsandbytes 4-bit){origin}; use --model.quantization none "
                "for a bf16 base on this machine",
                field="model.quantization",
            )
        if for_training and hp.finetune == "full":
            raise InputError(
                "full fine-tuning of a 4-bit model is not possible: use finetune: lora (QLoRA)",
                field="model.quantization",
            )
        kwargs["quantization_config"] = nf4_config(dtype if dtype != torch.float32 else torch.bfloat16)
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    return AutoModelForCausalLM.from_pretrained(require_model_path(hp), **kwargs)


def build_trainable(hp: ModelSpec, under_fsdp: bool = False) -> torch.nn.Module:
    """The model ``fit`` trains: the base plus a new or resumed LoRA adapter (``finetune: lora``) or all weights,
    with gradient checkpointing when asked, in train mode."""
    model = load_base(hp, for_training=True, under_fsdp=under_fsdp)
    if hp.finetune == "lora":
        from peft import LoraConfig, PeftModel, get_peft_model

        if hp.adapter_path:
            model = PeftModel.from_pretrained(model, hp.adapter_path, is_trainable=True)
        else:
            lora = hp.lora
            model = get_peft_model(
                model,
                LoraConfig(
                    r=lora.r,
                    lora_alpha=lora.alpha,
                    lora_dropout=lora.dropout,
                    target_modules=lora.target_modules,
                    task_type="CAUSAL_LM",
                ),
            )
    elif hp.adapter_path:
        raise InputError("adapter_path is for finetune: lora", field="model.adapter_path")
    if under_fsdp:  # one dtype per FSDP unit: adapters follow an explicitly chosen base dtype
        base_dtype = (
            next(p.dtype for p in model.parameters() if not p.requires_grad)
            if any(not p.requires_grad for p in model.parameters())
            else None
        )
        mixed = [p for p in model.parameters() if p.requires_grad and base_dtype and p.dtype != base_dtype]
        if mixed:
            rank_zero_warn(
                f"w2sr: FSDP needs one dtype per layer: the adapters are cast to {base_dtype} (use "
                "model.dtype auto for float32 weights with bf16-mixed compute)"
            )
            for param in mixed:
                param.data = param.data.to(base_dtype)
    if hp.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    model.train()  # from_pretrained returns eval mode, where dropout and HF gradient checkpointing are off
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    rank_zero_info(
        f"w2sr: {hp.finetune} fine-tuning of {hp.model_name_or_path}: {trainable:,} trainable of {total:,} parameters"
    )
    return model


def load_for_inference(hp: ModelSpec, device: torch.device | str | None = None) -> torch.nn.Module:
    """The base plus ``adapter_path`` when given, on ``device`` (a 4-bit base stays where it was put), eval mode."""
    model = load_base(hp, for_training=False)
    if hp.adapter_path:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, hp.adapter_path)
    if device is not None and resolve_quantization(hp.quantization, hp.adapter_path)[0] != "nf4":
        model = model.to(device)
    model.eval()
    return model
