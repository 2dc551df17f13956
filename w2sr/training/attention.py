"""``sdpa_varlen``: scaled-dot-product attention that runs each packed example on its own (no masked-out work).

With packed rows (``data.packing: true``) transformers' ``sdpa`` and ``eager`` attention receive a block-diagonal
mask built from the restarting ``position_ids`` and still compute every query x key pair of the row: a 4,096-token
row of four examples costs as much attention as one 4,096-token example. On GPUs use a library kernel instead:
``flash_attention_2`` (varlen; ``w2sr.training.batching`` flattens the micro-batch and passes ``cu_seq_lens``) or
``flex_attention`` (a block-sparse document mask). Neither trains on the CPU (no flash-attn; FlexAttention has no
CPU backward), which is what ``sdpa_varlen`` is for: an exact path that skips masked-out pairs. It splits each row
at the position-id restarts and attends causally within each segment (``is_causal=True``), and its mask function
(:func:`varlen_mask`) builds no dense mask for such batches; padded batches fall back to transformers' ``sdpa``.
Select it with ``model.attn_implementation: sdpa_varlen``. Exercised by ``pytest tests/training/test_packing.py
tests/training/test_packing_attention.py`` and ``python benchmarks/packing.py``.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from transformers import PretrainedConfig

NAME = "sdpa_varlen"


_last: tuple[Any, list[list[tuple[int, int]]]] = (None, [])


def segments(position_ids: torch.Tensor) -> list[list[tuple[int, int]]]:
    """Per row, the ``(start, end)`` of each run of positions that restarts at 0 (or jumps).

    Every layer gets the same ``position_ids`` tensor: the last answer is reused, so a GPU run syncs once per
    forward, not once per layer."""
    global _last
    if _last[0] is not None and _last[0]() is position_ids:
        return _last[1]
    rows = []
    ids = position_ids.tolist()
    for row in ids:
        starts = [0] + [t for t in range(1, len(row)) if row[t] != row[t - 1] + 1]
        rows.append(list(zip(starts, starts[1:] + [len(row)])))
    _last = (weakref.ref(position_ids), rows)
    return rows


def sdpa_varlen_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """``query``: [batch, heads, q, dim]; ``key``/``value``: [batch, kv_heads, k, dim].

    Returns [batch, q, heads, dim]."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    position_ids = kwargs.get("position_ids")
    if (
        position_ids is None
        or query.shape[2] != key.shape[2]
        or query.shape[2] == 1
        or getattr(module, "sliding_window", None)
    ):  # a windowed layer: transformers' mask (varlen_mask)
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if position_ids.shape[0] != query.shape[0]:
        position_ids = position_ids.expand(query.shape[0], -1)
    rows = segments(position_ids)
    if all(len(r) == 1 for r in rows):  # nothing packed: the usual path (with its padding mask)
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    gqa = query.shape[1] != key.shape[1]
    out = torch.empty_like(query)
    for b, row in enumerate(rows):
        for start, end in row:
            out[b : b + 1, :, start:end] = F.scaled_dot_product_attention(
                query[b : b + 1, :, start:end],
                key[b : b + 1, :, start:end],
                value[b : b + 1, :, start:end],
                dropout_p=dropout if module.training else 0.0,
                scale=scaling,
                is_causal=True,
                enable_gqa=gqa,
            )
    return out.transpose(1, 2).contiguous(), None


def _windowed(config: PretrainedConfig) -> bool:
    """Whether some layer attends within a window (sliding / chunked): those need transformers' mask."""
    types = getattr(config, "layer_types", None) or ()
    return (
        any(t != "full_attention" for t in types)
        or bool(getattr(config, "sliding_window", None))
        or bool(getattr(config, "attention_chunk_size", None))
    )


def varlen_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    mask_function: Any = None,
    attention_mask: torch.Tensor | None = None,
    **kwargs: Any,
) -> Any:
    """No mask when nothing is padded and nothing is cached: ``sdpa_varlen`` attends causally per packed example
    (or over the whole row), so the dense ``[batch, 1, q, k]`` block-diagonal mask transformers would build from the
    position ids is never made. Otherwise (padding, generation with a cache, windowed layers): transformers'
    ``sdpa_mask``."""
    from transformers.masking_utils import causal_mask_function, sdpa_mask

    if (
        attention_mask is None
        and q_length == kv_length
        and not q_offset
        and not kv_offset
        and not _windowed(kwargs.get("config"))
    ):
        return None
    return sdpa_mask(
        batch_size,
        q_length,
        kv_length,
        q_offset,
        kv_offset,
        mask_function or causal_mask_function,
        attention_mask,
        **kwargs,
    )


def register() -> None:
    """Make ``attn_implementation="sdpa_varlen"`` known to transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, sdpa_varlen_attention)
    AttentionMaskInterface.register(NAME, varlen_mask)
