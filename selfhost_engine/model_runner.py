"""Runs an unmodified transformers causal LM on packed batches with the paged attention.

The model is loaded with `from_pretrained(..., attn_implementation="selfhost_paged")` and called
on `[1, T]` input ids with explicit `position_ids`, `use_cache=False`, and `logits_to_keep` set to
the last token of every sequence that samples this step. CPU path: eager. CUDA path: KV pool sized
from free memory and decode-only steps replayed from CUDA graphs captured per batch-size bucket
(falls back to eager if capture fails or `enforce_eager` is set).
"""
from __future__ import annotations

import logging
import math

import torch
from transformers import AutoModelForCausalLM

from .attention import ATTN_NAME, AttentionContext, PrefillChunk
from .config import EngineConfig
from .kv_cache import KVCache
from .loading import MODEL_LOAD_LOCK
from .sequence import Sequence

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
            "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}[name]


class ModelRunner:
    def __init__(self, config: EngineConfig, model=None):
        self.config = config
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        if config.num_threads and self.device.type == "cpu":
            torch.set_num_threads(config.num_threads)
        if model is None:
            with MODEL_LOAD_LOCK:
                model = AutoModelForCausalLM.from_pretrained(config.model, dtype=self.dtype,
                                                             attn_implementation=ATTN_NAME)
        else:
            model.set_attn_implementation(ATTN_NAME)
        self.model = model.to(self.device).eval()
        tc = self.model.config.get_text_config()
        self.num_layers = tc.num_hidden_layers
        self.num_heads = tc.num_attention_heads
        self.num_kv_heads = getattr(tc, "num_key_value_heads", None) or self.num_heads
        self.head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // self.num_heads
        self.vocab_size = tc.vocab_size
        max_pos = getattr(tc, "max_position_embeddings", 8192) or 8192
        if config.max_model_len is None:
            config.max_model_len = min(max_pos, 8192)
        bs = config.block_size
        self.use_graphs = self.device.type == "cuda" and not config.enforce_eager
        if config.num_blocks is None:
            config.num_blocks = self._auto_num_blocks()
        if config.num_blocks * bs < config.max_model_len:
            log.warning("KV pool (%d tokens) is smaller than max_model_len; capping max_model_len",
                        config.num_blocks * bs)
            config.max_model_len = config.num_blocks * bs
        # one spare block at the end absorbs the padded rows of CUDA-graph batches
        self.kv = KVCache(self.num_layers, config.num_blocks + 1, bs, self.num_kv_heads, self.head_dim,
                          self.dtype, self.device)
        self.pad_slot = config.num_blocks * bs
        self.graphs: dict[int, tuple] = {}
        if self.use_graphs:
            try:
                self._capture_graphs()
            except Exception as e:  # pragma: no cover - GPU only
                log.warning("CUDA graph capture failed (%s); running eager", e)
                self.graphs = {}

    # ---- sizing ---------------------------------------------------------------------------------
    def _auto_num_blocks(self) -> int:
        c = self.config
        per_block = KVCache.bytes_per_block(self.num_layers, c.block_size, self.num_kv_heads,
                                            self.head_dim, self.dtype)
        if self.device.type == "cuda":  # pragma: no cover - GPU only
            self.warmup(c.max_num_batched_tokens)
            free, total = torch.cuda.mem_get_info(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
            cur = torch.cuda.memory_allocated(self.device)
            budget = total * c.gpu_memory_utilization - (total - free) - (peak - cur)
            n = int(budget // per_block)
            if n <= 0:
                raise RuntimeError("no GPU memory left for the KV cache; lower the model size or raise "
                                   "gpu_memory_utilization")
            return n
        want = c.max_num_seqs * math.ceil(c.max_model_len / c.block_size)
        cap = int(c.cpu_kv_cache_gb * (1 << 30) // per_block)
        return max(1, min(want, cap))

    @torch.inference_mode()
    def warmup(self, num_tokens: int) -> None:
        """One prefill forward of num_tokens with a scratch KV cache (measures peak activation memory
        on CUDA before the real pool is sized)."""
        bs = self.config.block_size
        n = max(1, min(num_tokens, self.config.max_model_len or num_tokens))
        kv = KVCache(self.num_layers, -(-n // bs), bs, self.num_kv_heads, self.head_dim, self.dtype, self.device)
        ctx = AttentionContext(kv, torch.arange(n, device=self.device), prefills=[PrefillChunk(0, n, n)])
        ids = torch.zeros((1, n), dtype=torch.long, device=self.device)
        pos = torch.arange(n, device=self.device)[None]
        self.model(input_ids=ids, position_ids=pos, use_cache=False, logits_to_keep=1, paged_ctx=ctx)
        del kv, ctx
        if self.device.type == "cuda":  # pragma: no cover - GPU only
            torch.cuda.synchronize()

    # ---- batch preparation ----------------------------------------------------------------------
    def _prepare(self, scheduled: list[tuple[Sequence, int]], num_decodes: int):
        bs = self.config.block_size
        dev = self.device
        ids: list[int] = []
        pos: list[int] = []
        slots: list[int] = []
        keep: list[int] = []
        prefills: list[PrefillChunk] = []
        off = 0
        for i, (seq, n) in enumerate(scheduled):
            c = seq.num_computed_tokens
            bt = seq.block_table
            toks = seq.token_ids + seq.spec_token_ids if seq.spec_token_ids else seq.token_ids
            ids.extend(toks[c:c + n])
            if n == 1:
                pos.append(c)
                slots.append(bt[c // bs] * bs + c % bs)
            else:
                pos.extend(range(c, c + n))
                slots.extend(bt[p // bs] * bs + p % bs for p in range(c, c + n))
            if i >= num_decodes:
                chunk = PrefillChunk(off, n, c + n)
                if c > 0:
                    nb = -(-(c + n) // bs)
                    chunk.blocks = torch.tensor(bt[:nb], dtype=torch.long, device=dev)
                    chunk.mask = (torch.arange(nb * bs)[None, :] <= (c + torch.arange(n))[:, None]).to(dev)
                prefills.append(chunk)
            off += n
            if c + n == len(toks):   # samples: one row, plus one per drafted token being verified
                keep.extend(range(off - 1 - len(seq.spec_token_ids), off))
        ctx = AttentionContext(self.kv, torch.tensor(slots, dtype=torch.long, device=dev),
                               num_decodes=num_decodes, prefills=prefills)
        if num_decodes:
            dseqs = [s for s, _ in scheduled[:num_decodes]]
            lens = [s.num_computed_tokens + 1 for s in dseqs]
            nb = -(-max(lens) // bs)
            bt = [s.block_table[:nb] for s in dseqs]
            ctx.decode_blocks = torch.tensor([b + [0] * (nb - len(b)) for b in bt], dtype=torch.long, device=dev)
            mask = torch.arange(nb * bs)[None, :] < torch.tensor(lens)[:, None]
            ctx.decode_mask = mask.view(num_decodes, 1, 1, nb * bs).to(dev)
        input_ids = torch.tensor(ids, dtype=torch.long, device=dev)[None]
        positions = torch.tensor(pos, dtype=torch.long, device=dev)[None]
        return input_ids, positions, ctx, keep

    # ---- execution ------------------------------------------------------------------------------
    @torch.inference_mode()
    def run(self, scheduled: list[tuple[Sequence, int]], num_decodes: int,
            copies: list[tuple[int, int]] = ()) -> tuple[torch.Tensor, list[int]]:
        """Returns (logits [K, V] float32, owners): owners index `scheduled`, in row order; an owner
        has 1 + len(spec_token_ids) rows. `copies` (copy-on-write blocks) are done first."""
        self.kv.copy_blocks(list(copies))
        owners = [i for i, (s, n) in enumerate(scheduled)
                  if s.num_computed_tokens + n == s.num_tokens + len(s.spec_token_ids)]
        if self.graphs and num_decodes == len(scheduled) and num_decodes <= max(self.graphs):
            return self._run_graph(scheduled), owners  # pragma: no cover - GPU only
        input_ids, positions, ctx, keep = self._prepare(scheduled, num_decodes)
        if not keep:
            keep = [input_ids.shape[1] - 1]
        out = self.model(input_ids=input_ids, position_ids=positions, use_cache=False,
                         logits_to_keep=torch.tensor(keep, dtype=torch.long, device=self.device),
                         paged_ctx=ctx)
        logits = out.logits[0]
        if not owners:
            logits = logits[:0]
        return logits.float(), owners

    # ---- CUDA graphs (decode only) ----------------------------------------------------------------
    def _graph_buckets(self) -> list[int]:  # pragma: no cover - GPU only
        mx = min(self.config.cuda_graph_max_bs, self.config.max_num_seqs)
        return sorted({b for b in [1, 2, 4, 8, *range(16, mx + 1, 16), mx] if b <= mx})

    @torch.inference_mode()
    def _capture_graphs(self) -> None:  # pragma: no cover - GPU only
        c = self.config
        dev = self.device
        mx = max(self._graph_buckets())
        nb = math.ceil(c.max_model_len / c.block_size)
        width = nb * c.block_size
        self.g_ids = torch.zeros(mx, dtype=torch.long, device=dev)
        self.g_pos = torch.zeros(mx, dtype=torch.long, device=dev)
        self.g_slots = torch.full((mx,), self.pad_slot, dtype=torch.long, device=dev)
        self.g_blocks = torch.full((mx, nb), c.num_blocks, dtype=torch.long, device=dev)
        self.g_mask = torch.zeros((mx, 1, 1, width), dtype=torch.bool, device=dev)
        self.g_mask[..., 0] = True
        pool = None
        for b in reversed(self._graph_buckets()):
            ctx = AttentionContext(self.kv, self.g_slots[:b], num_decodes=b,
                                   decode_blocks=self.g_blocks[:b], decode_mask=self.g_mask[:b])
            kw = dict(input_ids=self.g_ids[:b][None], position_ids=self.g_pos[:b][None], use_cache=False,
                      logits_to_keep=0, paged_ctx=ctx)
            self.model(**kw)  # warm up
            torch.cuda.synchronize()
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool):
                logits = self.model(**kw).logits
            pool = g.pool()
            self.graphs[b] = (g, logits)
        torch.cuda.synchronize()

    def _run_graph(self, scheduled: list[tuple[Sequence, int]]) -> torch.Tensor:  # pragma: no cover
        bs = self.config.block_size
        B = len(scheduled)
        b = min(k for k in self.graphs if k >= B)
        g, logits = self.graphs[b]
        nb = self.g_blocks.shape[1]
        width = nb * bs
        ids = [s.token_ids[-1] for s, _ in scheduled]
        pos = [s.num_computed_tokens for s, _ in scheduled]
        slots = [s.block_table[p // bs] * bs + p % bs for (s, _), p in zip(scheduled, pos)]
        bt = torch.tensor([s.block_table + [self.config.num_blocks] * (nb - len(s.block_table))
                           for s, _ in scheduled], dtype=torch.long)
        mask = torch.arange(width)[None, :] <= torch.tensor(pos)[:, None]
        self.g_ids[:B].copy_(torch.tensor(ids), non_blocking=True)
        self.g_pos[:B].copy_(torch.tensor(pos), non_blocking=True)
        self.g_slots[:B].copy_(torch.tensor(slots), non_blocking=True)
        self.g_slots[B:b].fill_(self.pad_slot)
        self.g_blocks[:B].copy_(bt, non_blocking=True)
        self.g_mask[:B, 0, 0].copy_(mask, non_blocking=True)
        g.replay()
        return logits[0, :B].float()
