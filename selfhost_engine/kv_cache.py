"""Paged KV cache storage: per layer `[num_blocks, block_size, kv_heads, head_dim]` for K and V."""
from __future__ import annotations

import torch


class KVCache:
    def __init__(self, num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int,
                 head_dim: int, dtype: torch.dtype, device: torch.device):
        shape = (num_blocks, block_size, num_kv_heads, head_dim)
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        # flattened views over the same storage: slot = block_id * block_size + offset
        self.k_flat = [t.view(num_blocks * block_size, num_kv_heads, head_dim) for t in self.k]
        self.v_flat = [t.view(num_blocks * block_size, num_kv_heads, head_dim) for t in self.v]
        # one row per block: gathering whole blocks copies contiguous runs (about 2x faster than per slot)
        self.k_rows = [t.view(num_blocks, -1) for t in self.k]
        self.v_rows = [t.view(num_blocks, -1) for t in self.v]

    def gather(self, layer: int, block_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """block_ids: [N] → K, V as [N * block_size, kv_heads, head_dim]."""
        shape = (-1, self.k[layer].shape[2], self.k[layer].shape[3])
        return (self.k_rows[layer].index_select(0, block_ids).view(shape),
                self.v_rows[layer].index_select(0, block_ids).view(shape))

    @staticmethod
    def bytes_per_block(num_layers: int, block_size: int, num_kv_heads: int, head_dim: int,
                        dtype: torch.dtype) -> int:
        return 2 * num_layers * block_size * num_kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()

    def write(self, layer: int, slot_mapping: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> None:
        """key/value: [T, kv_heads, head_dim]; slot_mapping: [T] (long)."""
        self.k_flat[layer].index_copy_(0, slot_mapping, key)
        self.v_flat[layer].index_copy_(0, slot_mapping, value)
