"""Packed micro-batches are exact under every attention implementation (issue 17, item 1).

A packed micro-batch of two rows (``data.batch_size > 1``) must give the same token-NLL sum as the same examples
unpacked, for every implementation that runs here: sdpa, eager and sdpa_varlen (rows of restarting position ids),
flex_attention (forward only: no CPU backward), and the flash-attention layout (the micro-batch flattened into one row
with ``cu_seq_lens``), checked on the CPU through a varlen attention registered for the test that *needs* those
boundaries; flash_attention_2 itself in the ``gpu`` test. Combinations that cannot be exact end in exit 2.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import make_traces, run_cli

from w2sr.records.jsonl import InputError
from w2sr.runtime.preflight import packed_layout
from w2sr.training.batching import BatchCollator, MicroBatch
from w2sr.training.datamodule import TraceDataModule, tokenize_trace
from w2sr.training.losses import token_nll_sum

META = MicroBatch(rows=(), step_tokens=0, step_end=True)


def _model(path: str, attn: str):
    from transformers import AutoModelForCausalLM

    if attn == "sdpa_varlen":
        from w2sr.training.attention import register

        register()
    return AutoModelForCausalLM.from_pretrained(path, attn_implementation=attn, dtype=torch.float32)


def _batches(tokenizer, layout: str = "rows"):
    examples = [tokenize_trace(tokenizer, t) for t in make_traces(5)]
    rows = [examples[:3], examples[3:]]  # two packed rows: the case transformers' FA2 path got wrong
    packed = BatchCollator(tokenizer.pad_token_id, packing=True, layout=layout)((rows, META))
    padded = BatchCollator(tokenizer.pad_token_id)(([[e] for e in examples], META))
    return packed, padded


def _nll_and_grads(model, batch, impl):
    model.zero_grad()
    nll, tokens = token_nll_sum(model, batch, impl)
    nll.backward()
    return nll.detach(), int(tokens), [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("attn", ["sdpa", "eager", "sdpa_varlen"])
@pytest.mark.parametrize("impl", ["naive", "chunked"])
def test_packed_loss_and_gradients_equal_unpacked(tiny_model, tiny_tokenizer, attn, impl):
    model = _model(tiny_model, attn).train()
    packed, padded = _batches(tiny_tokenizer)
    assert packed["input_ids"].shape[0] == 2 and "attention_mask" not in packed
    p_nll, p_tokens, p_grads = _nll_and_grads(model, packed, impl)
    u_nll, u_tokens, u_grads = _nll_and_grads(model, padded, impl)
    assert p_tokens == u_tokens == packed["num_targets"]
    torch.testing.assert_close(p_nll, u_nll, rtol=1e-5, atol=1e-5)
    for a, b in zip(p_grads, u_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_flex_attention_packed_loss_equals_unpacked_forward(tiny_model, tiny_tokenizer):
    model = _model(tiny_model, "flex_attention").eval()
    packed, padded = _batches(tiny_tokenizer)
    with torch.no_grad():
        try:
            p_nll, _ = token_nll_sum(model, packed, "naive")
        except Exception as err:  # noqa: BLE001 - flex_attention not usable on this CPU build
            pytest.skip(f"flex_attention does not run here: {type(err).__name__}")
        u_nll, _ = token_nll_sum(model, padded, "naive")
    torch.testing.assert_close(p_nll, u_nll, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------- the flash-attention layout, on the CPU
SEEN: list[dict] = []


def _varlen_from_cu_seqlens(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """What flash_attn_varlen_func does, in SDPA: attention within each [cu[i], cu[i+1]) of the flattened tokens.
    Refuses to run without the boundaries, so the test proves they reach every layer through w2sr's loss code."""
    cu = kwargs.get("cu_seq_lens_q")
    assert cu is not None and kwargs.get("max_length_q") is not None, "varlen boundaries did not reach attention"
    assert query.shape[0] == 1, "flash-attention varlen needs one flattened row"
    SEEN.append({"cu": cu.tolist(), "max": kwargs["max_length_q"]})
    out = torch.empty_like(query)
    bounds = cu.tolist()
    for start, end in zip(bounds, bounds[1:]):
        out[:, :, start:end] = F.scaled_dot_product_attention(
            query[:, :, start:end],
            key[:, :, start:end],
            value[:, :, start:end],
            scale=scaling,
            is_causal=True,
            enable_gqa=query.shape[1] != key.shape[1],
        )
    return out.transpose(1, 2).contiguous(), None


@pytest.mark.parametrize("impl", ["naive", "chunked"])
def test_flat_layout_passes_varlen_boundaries_and_equals_unpacked(tiny_model, tiny_tokenizer, impl):
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register("w2sr_test_varlen", _varlen_from_cu_seqlens)
    AttentionMaskInterface.register("w2sr_test_varlen", lambda *args, **kwargs: None)
    packed, padded = _batches(tiny_tokenizer, layout="flat")
    lengths = [len(tokenize_trace(tiny_tokenizer, t).input_ids) for t in make_traces(5)]
    assert packed["input_ids"].shape == (1, sum(lengths))  # one row, no padding at all
    assert packed["cu_seq_lens_q"].tolist() == [sum(lengths[:k]) for k in range(6)]
    assert packed["max_length_q"] == max(lengths) and packed["num_targets"] == padded["num_targets"]
    SEEN.clear()
    flat_model = _model(tiny_model, "w2sr_test_varlen").train()
    p_nll, p_tokens, p_grads = _nll_and_grads(flat_model, packed, impl)
    assert len(SEEN) == flat_model.config.num_hidden_layers  # every layer got the boundaries
    plain = _model(tiny_model, "sdpa").train()
    u_nll, u_tokens, u_grads = _nll_and_grads(plain, padded, impl)
    assert p_tokens == u_tokens
    torch.testing.assert_close(p_nll, u_nll, rtol=1e-5, atol=1e-5)
    for a, b in zip(p_grads, u_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_datamodule_flattens_packed_batches_for_flash_attention(traces_file, tiny_model):
    from types import SimpleNamespace

    dm = TraceDataModule(
        str(traces_file),
        tokenizer=tiny_model,
        val_fraction=0.0,
        batch_size=2,
        packing=True,
        max_seq_length=256,
        cache_dir=None,
    )
    dm.setup("fit")
    dm.trainer = SimpleNamespace(
        lightning_module=SimpleNamespace(hparams={"attn_implementation": "flash_attention_2"}),
        accumulate_grad_batches=1,
        world_size=1,
        global_rank=0,
        strategy=SimpleNamespace(root_device=torch.device("cpu")),
    )
    batches = list(dm.train_dataloader())
    assert all(b["input_ids"].shape[0] == 1 and "cu_seq_lens_q" in b for b in batches)
    assert sum(b["num_examples"] for b in batches) == len(dm.train_examples)
    assert sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches) == sum(
        e.num_targets for e in dm.train_examples
    )
    dm.trainer.lightning_module.hparams["attn_implementation"] = "sdpa"
    assert next(iter(dm.train_dataloader()))["input_ids"].shape[0] == 2  # rows for sdpa


# ------------------------------------------------------------------------------ sdpa_varlen: no dense mask
def test_sdpa_varlen_builds_no_dense_mask_for_packed_rows(tiny_model, tiny_tokenizer):
    from transformers import AttentionInterface

    from w2sr.training import attention

    model = _model(tiny_model, "sdpa_varlen").eval()
    masks: list = []

    def spy(module, query, key, value, attention_mask, **kwargs):
        masks.append(attention_mask)
        return attention.sdpa_varlen_attention(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register(attention.NAME, spy)
    try:
        packed, padded = _batches(tiny_tokenizer)
        with torch.no_grad():
            model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False)
            assert masks and all(m is None for m in masks)  # nothing dense was built for the packed rows
            masks.clear()
            model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"], use_cache=False)
            assert masks and all(m is not None for m in masks)  # padding still gets its mask
    finally:
        attention.register()


# ---------------------------------------------------------------------------------------- refusals, exit 2
def test_packed_layout_per_implementation():
    for attn in (None, "sdpa", "eager", "flex_attention", "sdpa_varlen"):
        assert packed_layout(attn) == "rows"
    for attn in ("flash_attention_2", "flash_attention_3", "kernels-community/flash-attn2"):
        assert packed_layout(attn) == "flat"
    for attn in ("paged|sdpa", "sdpa_paged", "my_custom_attention"):
        with pytest.raises(InputError, match="model.attn_implementation"):
            packed_layout(attn)


def _fit_exit(tiny_model, train, run, capsys, *extra):
    args = [
        "fit",
        "--model.model_name_or_path",
        tiny_model,
        "--data.train_file",
        str(train),
        "--trainer.max_steps",
        "1",
        "--trainer.default_root_dir",
        str(run),
        "--model.export_dir",
        str(run / "export"),
        "--trainer.logger",
        "false",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.accelerator",
        "cpu",
        *extra,
    ]
    code, out = run_cli(args, capsys)
    return code, [line for line in out.splitlines() if line.startswith("w2sr: error:")], out


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--data.packing", "true", "--model.attn_implementation", "sdpa_paged"], "cannot keep packed examples apart"),
        (["--data.packing", "true", "--model.attn_implementation", "flash_attention_2"], "needs a CUDA GPU"),
        (["--model.attn_implementation", "flex_attention"], "cannot train on the CPU"),
    ],
)
def test_impossible_combinations_exit_2_before_the_data_is_read(tmp_path, tiny_model, capsys, extra, needle):
    if torch.cuda.is_available() and "sdpa_paged" not in extra:
        pytest.skip("these refusals are for a machine without CUDA")
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{not json\n")  # the refusal must come before this file is read
    code, lines, out = _fit_exit(tiny_model, broken, tmp_path / "run", capsys, *extra)
    assert code == 2 and "Traceback" not in out, out
    assert len(lines) == 1 and "model.attn_implementation" in lines[0] and needle in lines[0], out


# ------------------------------------------------------------------------------------ flash_attention_2, GPU
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_flash_attention_2_packed_loss_equals_unpacked(tiny_model, tiny_tokenizer):
    pytest.importorskip("flash_attn")
    from transformers import AutoModelForCausalLM

    fa2 = (
        AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="flash_attention_2", dtype=torch.bfloat16)
        .cuda()
        .eval()
    )
    ref = (
        AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="sdpa", dtype=torch.bfloat16).cuda().eval()
    )
    packed, padded = _batches(tiny_tokenizer, layout=packed_layout("flash_attention_2"))
    rows, _ = _batches(tiny_tokenizer, layout="rows")  # the old layout: two rows, restarting position ids

    def cuda(batch):
        return {k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()}

    with torch.no_grad():
        flat, _ = token_nll_sum(fa2, cuda(packed), "naive")
        unpacked_fa2, _ = token_nll_sum(fa2, cuda(padded), "naive")
        unpacked_sdpa, _ = token_nll_sum(ref, cuda(padded), "naive")
        two_rows, _ = token_nll_sum(fa2, cuda(rows), "naive")
    torch.testing.assert_close(flat, unpacked_fa2, rtol=2e-3, atol=1e-2)
    torch.testing.assert_close(flat, unpacked_sdpa, rtol=1e-2, atol=5e-2)
    assert not torch.allclose(two_rows, unpacked_fa2, rtol=1e-3)  # what two packed rows gave before the fix
