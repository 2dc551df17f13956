"""Sharded training: FSDP set-up from the model's decoder layers, DeepSpeed's missing-extra error, and the export
of sharded checkpoints (saved by 2 CPU ranks with gloo, consolidated offline) into folders transformers/peft load.

The real FSDP runs need CUDA (Lightning refuses FSDP on the CPU): they are the ``gpu`` tests at the end.
"""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch

QUIET = ["--trainer.logger", "false"]


def main(args: list[str]) -> None:
    """The w2sr CLI, imported lazily: the spawned gloo ranks import this module and need only torch."""
    from w2sr.cli import main as cli_main

    cli_main(args)


# ------------------------------------------------------------------------------------------ strategy set-up
def _student(model):
    from w2sr.training.module import StudentModule

    module = StudentModule(model_name_or_path="unused")
    module.model = model
    return module


def test_prepare_fills_wrap_and_checkpointing_policy_per_decoder_layer(tiny_model):
    from lightning.pytorch.strategies import FSDPStrategy
    from transformers import AutoModelForCausalLM

    from w2sr.training.strategies import DecoderLayerPolicy, prepare_strategy

    strategy = FSDPStrategy()  # what --trainer.strategy fsdp gives
    prepare_strategy(strategy)
    policy = strategy.kwargs["auto_wrap_policy"]
    assert isinstance(policy, DecoderLayerPolicy)
    assert isinstance(strategy._activation_checkpointing_kwargs["auto_wrap_policy"], DecoderLayerPolicy)
    assert strategy._state_dict_type == "sharded" and strategy.kwargs["use_orig_params"] is True
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    wrapped = policy._run_policy(_student(model), set(), {})  # as FSDP applies it to the LightningModule
    assert set(wrapped) == set(model.model.layers)  # one FSDP unit per decoder layer (the root is wrapped anyway)


def test_wrap_policy_finds_layers_under_peft_and_qwen2():
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Qwen2Config
    from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer

    from w2sr.training.strategies import DecoderLayerPolicy, layer_classes_of

    model = AutoModelForCausalLM.from_config(
        Qwen2Config(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=2,
            num_key_value_heads=1,
            vocab_size=100,
        )
    )
    peft = get_peft_model(model, LoraConfig(r=2, target_modules="all-linear", task_type="CAUSAL_LM"))
    assert layer_classes_of(_student(peft)) == {Qwen2DecoderLayer}
    wrapped = DecoderLayerPolicy()._run_policy(_student(peft), set(), {})
    assert set(wrapped) == set(model.model.layers) and len(wrapped) == 3
    with pytest.raises(ValueError, match="decoder-layer"):
        DecoderLayerPolicy()._run_policy(torch.nn.Sequential(torch.nn.Linear(2, 2)), set(), {})


def test_user_policies_are_kept_and_w2sr_strategy_is_registered():
    from lightning.pytorch.strategies import FSDPStrategy, StrategyRegistry
    from torch import nn

    from w2sr.training.strategies import DecoderLayerPolicy, W2SRFSDPStrategy, prepare_strategy

    strategy = FSDPStrategy(auto_wrap_policy={nn.Linear}, state_dict_type="full")
    prepare_strategy(strategy)
    assert strategy.kwargs["auto_wrap_policy"]._module_classes == {nn.Linear}
    assert "w2sr_fsdp" in StrategyRegistry and StrategyRegistry["w2sr_fsdp"]["strategy"] is W2SRFSDPStrategy
    mine = W2SRFSDPStrategy(activation_checkpointing_layers=False, sharding_strategy="HYBRID_SHARD")
    prepare_strategy(mine)
    assert not mine._activation_checkpointing_kwargs and mine._state_dict_type == "sharded"
    assert isinstance(mine.kwargs["auto_wrap_policy"], DecoderLayerPolicy)
    full = W2SRFSDPStrategy(state_dict_type="full")
    prepare_strategy(full)
    assert full._state_dict_type == "full" and full._activation_checkpointing_kwargs


def test_fit_with_fsdp_strategy_is_no_longer_refused_by_the_model(tiny_model):
    """setup() used to raise for FSDP/DeepSpeed; now it prepares the strategy (Lightning itself needs a GPU)."""
    from lightning.pytorch.strategies import FSDPStrategy

    from w2sr.training.module import StudentModule

    module = StudentModule(model_name_or_path=tiny_model)

    class FakeTrainer:
        strategy = FSDPStrategy()
        default_root_dir = "/nonexistent-w2sr-root"

    module._trainer = FakeTrainer()
    module.setup("fit")
    assert "auto_wrap_policy" in FakeTrainer.strategy.kwargs and FakeTrainer.strategy._state_dict_type == "sharded"


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed", "bf16-true"])
def test_fsdp_mixed_precision_keeps_rope_inv_freq_in_float32(tiny_model, precision):
    """Lightning's FSDP ``MixedPrecision`` for ``bf16-mixed`` casts every buffer to bf16, RoPE's ``inv_freq``
    included, while inference computes the angles from float32 (issue 26, item 8): at position 4,000 of a
    Qwen2.5-Math-7B head (theta 1e4, head dim 128) the bf16 angles are off by 4.9 rad. After ``prepare_strategy``
    (what ``StudentModule.setup`` calls) the parameters still compute in the low precision and buffers keep their
    dtype. FSDP itself needs a GPU: the real run is ``test_fsdp_bf16_mixed_trains_with_float32_inv_freq``."""
    from lightning.pytorch.plugins.precision import FSDPPrecision
    from lightning.pytorch.strategies import FSDPStrategy
    from transformers import AutoModelForCausalLM

    from w2sr.training.strategies import prepare_strategy

    strategy = FSDPStrategy(precision_plugin=FSDPPrecision(precision))
    low = strategy.mixed_precision_config.param_dtype
    assert strategy.mixed_precision_config.buffer_dtype == low != torch.float32  # what Lightning builds
    prepare_strategy(strategy)
    config = strategy.mixed_precision_config
    assert config.param_dtype == config.reduce_dtype == low and config.buffer_dtype is None

    def cast(buffer: torch.Tensor) -> torch.Tensor:  # what FSDP does to a floating-point buffer before forward
        return buffer if config.buffer_dtype is None else buffer.to(config.buffer_dtype)

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    inv_freq = model.model.rotary_emb.inv_freq
    assert inv_freq.dtype == torch.float32 and cast(inv_freq).dtype == torch.float32
    qwen_math = 1.0 / (10_000 ** (torch.arange(0, 128, 2).float() / 128))  # Qwen2.5-Math-7B's inv_freq
    error = (4_000 * (cast(qwen_math).float() - qwen_math)).abs().max()
    assert float(error) == 0.0
    assert float((4_000 * (qwen_math.to(low).float() - qwen_math)).abs().max()) > 0.5  # the bug: 4.9 rad in bf16


def test_a_user_mixed_precision_is_kept_with_a_warning():
    """A ``mixed_precision`` given in the strategy's arguments is the user's choice: kept (bf16 buffers included),
    with a warning that it casts RoPE's ``inv_freq``."""
    from lightning.pytorch.strategies import FSDPStrategy
    from torch.distributed.fsdp import MixedPrecision

    from w2sr.training.strategies import prepare_strategy

    given = MixedPrecision(param_dtype=torch.bfloat16, buffer_dtype=torch.bfloat16)
    strategy = FSDPStrategy(mixed_precision=given)
    with pytest.warns(UserWarning, match="inv_freq"):
        prepare_strategy(strategy)
    assert strategy.mixed_precision_config is given and given.buffer_dtype == torch.bfloat16


@pytest.mark.skipif(
    __import__("importlib.util").util.find_spec("deepspeed") is not None, reason="deepspeed is installed"
)
@pytest.mark.parametrize(
    "strategy", ["deepspeed_stage_3", "w2sr_deepspeed_stage_2", "w2sr.strategies.W2SRDeepSpeedStrategy"]
)
def test_deepspeed_missing_exits_2_before_loading(tmp_path, traces_file, strategy, capsys):
    with pytest.raises(SystemExit) as err:
        main(
            [
                "fit",
                "--model.model_name_or_path",
                "/nonexistent/model",
                "--data.train_file",
                str(traces_file),
                "--trainer.strategy",
                strategy,
                "--trainer.default_root_dir",
                str(tmp_path),
                *QUIET,
            ]
        )
    assert err.value.code == 2
    assert 'pip install "w2sr[deepspeed]"' in capsys.readouterr().err


@pytest.mark.skipif(
    __import__("importlib.util").util.find_spec("deepspeed") is not None, reason="deepspeed is installed"
)
def test_paper_zero3_config_without_deepspeed_exits_2(tmp_path, capsys):
    from conftest import REPO

    with pytest.raises(SystemExit) as err:  # the class_path form, from YAML; nothing is loaded or written
        main(
            [
                "fit",
                "--config",
                str(REPO / "lightning_configs/paper/fit_full_qwen2.5-math-7b_zero3.yaml"),
                "--trainer.default_root_dir",
                str(tmp_path),
                *QUIET,
            ]
        )
    assert err.value.code == 2 and 'pip install "w2sr[deepspeed]"' in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_deepspeed_strategy_detection():
    from w2sr.training.strategies import wants_deepspeed

    assert wants_deepspeed("deepspeed_stage_3") and wants_deepspeed(
        {"class_path": "lightning.pytorch.strategies.DeepSpeedStrategy"}
    )
    assert not wants_deepspeed("ddp") and not wants_deepspeed(None) and not wants_deepspeed({"class_path": "x.FSDP"})


# ------------------------------------------------------------------- sharded checkpoint -> consolidated export
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _save_shards(rank: int, world: int, port: int, states: dict, out: str) -> None:
    """One rank of a gloo group: shard each state dict (dim 0) and save it with torch.distributed.checkpoint in the
    layout of Lightning's FSDP ``state_dict_type: sharded`` checkpoints (``{"model": ..., "optimizer_0": ...}``)."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,))
    for kind, state in states.items():
        sharded = {f"model.{k}": distribute_tensor(v, mesh, [Shard(0)]) for k, v in state.items()}
        optimizer = {"state": {"0": {"exp_avg": distribute_tensor(torch.ones(8, 4), mesh, [Shard(0)])}}}
        dcp.save({"model": sharded, "optimizer_0": optimizer}, checkpoint_id=f"{out}/{kind}/last.ckpt")
    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)  # the shards are written: no interpreter teardown, where gloo's threads can abort under load


@pytest.fixture(scope="module")
def sharded_checkpoints(tiny_model, tmp_path_factory):
    """A "trained" full model and a LoRA model, saved as reference folders and as 2-rank sharded checkpoints."""
    import torch.multiprocessing as mp
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from w2sr.training.loading import LoraOptions
    from w2sr.training.module import StudentModule

    out = tmp_path_factory.mktemp("sharded")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.01)  # "trained": differs from the base on disk
    peft = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.2)
    states = {}
    for kind, net in (("full", model), ("lora", peft)):
        states[kind] = {k: v.detach().clone() for k, v in net.state_dict().items()}
        net.save_pretrained(out / kind / "reference")
    mp.spawn(_save_shards, args=(2, _free_port(), states, str(out)), nprocs=2, join=True)
    for kind in states:
        student = StudentModule(
            model_name_or_path=tiny_model,
            finetune=kind,
            lora=LoraOptions(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"]),
        )
        meta = {"hyper_parameters": dict(student.hparams), "global_step": 3}  # as Lightning writes meta.pt
        torch.save(meta, out / kind / "last.ckpt" / "meta.pt")
    return out


@pytest.mark.slow  # spawning 2 gloo ranks takes ~30 s on a busy 2-core machine
def test_consolidate_full_sharded_checkpoint(sharded_checkpoints, tmp_path, monkeypatch):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    import w2sr.training.shards

    ckpt = sharded_checkpoints / "full" / "last.ckpt"
    assert len(list(ckpt.glob("*.distcp"))) == 2  # one file per rank
    # several output shards, read group by group
    monkeypatch.setattr(w2sr.training.shards, "MAX_SHARD_BYTES", 64 * 1024)
    out = tmp_path / "model"
    main(["export", "--checkpoint", str(ckpt), "--output", str(out), *QUIET])
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert max(os.path.getsize(out / f) for f in set(index["weight_map"].values())) < 2 * 64 * 1024
    assert not any("exp_avg" in k for k in index["weight_map"])
    got = AutoModelForCausalLM.from_pretrained(out).state_dict()
    want = AutoModelForCausalLM.from_pretrained(sharded_checkpoints / "full" / "reference").state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    card = json.loads((out / "w2sr_student.json").read_text())
    assert card["finetune"] == "full" and card["consolidated_from"] == str(ckpt) and card["lora"] is None
    assert (out / "tokenizer_config.json").is_file()
    from w2sr.training.loading import load_tokenizer

    eos = json.loads((out / "generation_config.json").read_text())["eos_token_id"]  # it used to write none
    assert load_tokenizer(str(out)).convert_tokens_to_ids("<|im_end|>") in eos
    written = {k for f in set(index["weight_map"].values()) for k in load_file(out / f)}
    assert written == set(index["weight_map"])


@pytest.mark.slow  # spawning 2 gloo ranks takes ~30 s on a busy 2-core machine
def test_consolidate_lora_sharded_checkpoint_to_adapter(sharded_checkpoints, tiny_model, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "adapter"
    main(
        [
            "export",
            "--checkpoint",
            str(sharded_checkpoints / "lora" / "last.ckpt"),
            "--output",
            str(out),
            "--dtype",
            "float32",
            *QUIET,
        ]
    )
    ids = torch.randint(3, 60, (1, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), str(out))(ids).logits
        want = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(tiny_model), str(sharded_checkpoints / "lora" / "reference")
        )(ids).logits
        base = AutoModelForCausalLM.from_pretrained(tiny_model)(ids).logits
    assert (want - base).abs().max() > 0.05
    torch.testing.assert_close(got, want)


@pytest.mark.slow  # spawning 2 gloo ranks takes ~30 s on a busy 2-core machine
def test_consolidate_refuses_bad_folders(tmp_path, sharded_checkpoints):
    for args in (
        ["--checkpoint", str(tmp_path), "--output", str(tmp_path / "o")],
        [
            "--checkpoint",
            str(sharded_checkpoints / "full" / "last.ckpt"),
            "--output",
            str(sharded_checkpoints / "full" / "last.ckpt"),
            "--overwrite",
            "true",
        ],
    ):
        with pytest.raises(SystemExit) as err:
            main(["export", *args, *QUIET])
        assert err.value.code == 2
    assert (sharded_checkpoints / "full" / "last.ckpt" / "meta.pt").is_file()


# ------------------------------------------------------------------------------ real FSDP runs (one GPU)
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _gpu_fit_args(model_dir, traces_file, run, finetune, steps):
    return [
        "fit",
        "--model.model_name_or_path",
        model_dir,
        "--model.finetune",
        finetune,
        "--model.export_dir",
        str(run / "export"),
        "--data.train_file",
        str(traces_file),
        "--data.batch_size",
        "4",
        "--trainer.max_steps",
        str(steps),
        "--trainer.accelerator",
        "gpu",
        "--trainer.devices",
        "1",
        "--trainer.strategy",
        "fsdp",
        "--trainer.precision",
        "bf16-mixed",
        "--trainer.default_root_dir",
        str(run),
        "--trainer.logger",
        "false",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.num_sanity_val_steps",
        "0",
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        f"--trainer.callbacks.dirpath={run / 'checkpoints'}",
        "--trainer.callbacks.every_n_train_steps=2",
        "--trainer.callbacks.save_last=true",
    ]


@pytest.fixture
def small_model(tmp_path):
    from w2sr.toy import build_tiny_model

    return build_tiny_model(
        str(tmp_path / "model"),
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
    )


@pytest.mark.gpu
@needs_gpu
def test_fsdp_full_finetune_checkpoint_resume_and_consolidated_export(small_model, traces_file, tmp_path, capsys):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    run = tmp_path / "run"
    torch.cuda.reset_peak_memory_stats()
    main(_gpu_fit_args(small_model, traces_file, run, "full", 4))
    peak = torch.cuda.max_memory_allocated()
    estimate_line = [line for line in capsys.readouterr().err.splitlines() if "memory estimate" in line]
    print(f"\nW2SR-GPU-FIGURES fsdp full 1 GPU: measured peak {peak / 2**20:.1f} MiB; {estimate_line}")
    last = run / "checkpoints" / "last.ckpt"
    assert last.is_dir() and (last / ".metadata").is_file() and (last / "meta.pt").is_file()  # sharded
    initial = AutoModelForCausalLM.from_pretrained(small_model).state_dict()
    trained = AutoModelForCausalLM.from_pretrained(run / "export").state_dict()
    assert trained.keys() == initial.keys()
    assert any(not torch.equal(trained[k], initial[k]) for k in initial)  # the export holds the trained weights
    assert json.loads((run / "export" / "w2sr_student.json").read_text())["global_step"] == 4

    main(
        _gpu_fit_args(small_model, traces_file, run, "full", 6)
        + ["--ckpt_path", str(last), "--model.overwrite_export", "true"]
    )  # resume from the sharded last.ckpt
    assert json.loads((run / "export" / "w2sr_student.json").read_text())["global_step"] == 6
    assert torch.load(last / "meta.pt", weights_only=False)["global_step"] == 6
    main(["export", "--checkpoint", str(last), "--output", str(tmp_path / "consolidated"), *QUIET])
    exported = load_file(run / "export" / "model.safetensors")
    consolidated = load_file(tmp_path / "consolidated" / "model.safetensors")
    assert exported.keys() == consolidated.keys()
    assert all(torch.equal(exported[k], consolidated[k]) for k in exported)
    with torch.no_grad():
        model = AutoModelForCausalLM.from_pretrained(tmp_path / "consolidated").cuda()
        assert torch.isfinite(model(torch.tensor([[1, 2, 3]], device="cuda")).logits).all()


@pytest.mark.gpu
@needs_gpu
def test_fsdp_bf16_mixed_trains_with_float32_inv_freq(small_model, traces_file, tmp_path):
    """On a GPU: in a real FSDP ``bf16-mixed`` fit the RoPE buffer the forward pass reads is float32."""
    import lightning as L
    from lightning.pytorch.callbacks import Callback

    from w2sr.training.datamodule import TraceDataModule
    from w2sr.training.module import StudentModule

    seen: set[torch.dtype] = set()

    class Record(Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            seen.update(b.dtype for n, b in trainer.strategy.model.named_buffers() if n.endswith("inv_freq"))

    module = StudentModule(small_model, finetune="full", export_dir=str(tmp_path / "export"))
    data = TraceDataModule(str(traces_file), tokenizer=small_model, batch_size=4, val_fraction=0.0, cache_dir=None)
    L.Trainer(
        accelerator="gpu",
        devices=1,
        strategy="fsdp",
        precision="bf16-mixed",
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        num_sanity_val_steps=0,
        callbacks=[Record()],
        default_root_dir=str(tmp_path),
    ).fit(module, data)
    assert seen == {torch.float32}


@pytest.mark.gpu
@needs_gpu
def test_fsdp_lora_exports_a_peft_adapter(small_model, traces_file, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    run = tmp_path / "run"
    args = _gpu_fit_args(small_model, traces_file, run, "lora", 3) + ["--model.lora.r", "4"]
    main([a if a != "fsdp" else "w2sr_fsdp" for a in args])  # W2SRFSDPStrategy by its registry name
    weights = load_file(run / "export" / "adapter_model.safetensors")
    assert weights and all(".lora_" in k and ".default." not in k for k in weights)
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in weights.items())  # trained
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(small_model), str(run / "export"))
    assert sum(p.numel() for n, p in peft.named_parameters() if "lora_" in n) == sum(
        v.numel() for v in weights.values()
    )


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_full_finetune_checkpoint_resume_and_export(small_model, traces_file, tmp_path, stage):
    pytest.importorskip("deepspeed", reason='needs the extra: pip install "w2sr[deepspeed]"')
    from transformers import AutoModelForCausalLM

    run = tmp_path / "run"

    def args(steps):
        return [
            a if a != "fsdp" else f"w2sr_deepspeed_stage_{stage}"
            for a in _gpu_fit_args(small_model, traces_file, run, "full", steps)
        ]

    main(args(4))
    last = run / "checkpoints" / "last.ckpt"
    assert last.is_dir()  # DeepSpeed's checkpoint folder
    initial = AutoModelForCausalLM.from_pretrained(small_model).state_dict()
    trained = AutoModelForCausalLM.from_pretrained(run / "export").state_dict()
    assert trained.keys() == initial.keys() and all(trained[k].numel() == initial[k].numel() for k in initial)
    assert any(not torch.equal(trained[k].float(), initial[k]) for k in initial)
    assert (run / "export" / "generation_config.json").is_file()  # ZeRO-3's export used to write none
    main(args(6) + ["--ckpt_path", str(last), "--model.overwrite_export", "true"])
    assert json.loads((run / "export" / "w2sr_student.json").read_text())["global_step"] == 6
