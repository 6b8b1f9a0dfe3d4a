"""Paged attention plugged into transformers through `AttentionInterface.register`.

The model runs on one packed `[1, T]` batch: first the decode tokens (one per sequence), then the
prefill chunks. For each layer this function writes the new K/V into the paged cache (by slot
mapping), then attends: decodes in one batched SDPA over gathered, padded contexts; each prefill
chunk with its own SDPA (lower-right causal alignment when it continues a cached context).
GQA is handled without repeating K/V.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

from .kv_cache import KVCache

ATTN_NAME = "selfhost_paged"


@dataclass
class PrefillChunk:
    q_start: int        # offset in the packed batch
    q_len: int
    ctx_len: int        # tokens of context after this chunk (cached + new)
    blocks: torch.Tensor | None = None  # [nb] block ids of the whole context when ctx_len > q_len
    mask: torch.Tensor | None = None    # [q_len, nb * block_size] bool, lower-right causal


@dataclass
class AttentionContext:
    kv: KVCache
    slot_mapping: torch.Tensor                      # [T]
    num_decodes: int = 0
    decode_blocks: torch.Tensor | None = None       # [B, nb] block tables (padded with block 0)
    decode_mask: torch.Tensor | None = None         # [B, 1, 1, nb * block_size] bool
    prefills: list[PrefillChunk] = field(default_factory=list)


def paged_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                            paged_ctx: AttentionContext | None = None, **kwargs):
    """query: [1, H, T, D]; key/value: [1, KVH, T, D]. Returns ([1, T, H, D], None)."""
    ctx = paged_ctx
    if ctx is None:
        raise RuntimeError("selfhost_paged attention needs `paged_ctx` (run the model through ModelRunner)")
    layer = module.layer_idx
    _, H, T, D = query.shape
    KVH = key.shape[1]
    G = H // KVH
    q = query[0].transpose(0, 1)            # [T, H, D]
    k_new = key[0].transpose(0, 1)          # [T, KVH, D]
    v_new = value[0].transpose(0, 1)
    ctx.kv.write(layer, ctx.slot_mapping, k_new, v_new)
    out = torch.empty((T, H, D), dtype=query.dtype, device=query.device)

    B = ctx.num_decodes
    if B:
        kd, vd = ctx.kv.gather(layer, ctx.decode_blocks.reshape(-1))
        kd = kd.view(B, -1, KVH, D).transpose(1, 2)   # [B, KVH, L, D]
        vd = vd.view(B, -1, KVH, D).transpose(1, 2)
        qd = q[:B].reshape(B, KVH, G, D)    # the G query heads sharing a KV head act as G "positions"
        od = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=ctx.decode_mask, scale=scaling)
        out[:B] = od.reshape(B, H, D)

    for p in ctx.prefills:
        s, n = p.q_start, p.q_len
        qp = q[s:s + n].transpose(0, 1)     # [H, n, D]
        if p.blocks is None:                 # fresh prompt chunk: attend to itself, plain causal
            kp = k_new[s:s + n].transpose(0, 1)
            vp = v_new[s:s + n].transpose(0, 1)
            op = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, scale=scaling, enable_gqa=G > 1)
        else:                               # continues a cached context: lower-right causal mask
            kp, vp = ctx.kv.gather(layer, p.blocks)
            kp, vp = kp.transpose(0, 1), vp.transpose(0, 1)          # [KVH, L, D]
            op = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=p.mask, scale=scaling, enable_gqa=G > 1)
        out[s:s + n] = op.transpose(0, 1)
    return out.unsqueeze(0), None


AttentionInterface.register(ATTN_NAME, paged_attention_forward)
