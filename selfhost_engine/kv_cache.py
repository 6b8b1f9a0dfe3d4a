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
        # CPU: gathers copy into reused scratch rows. A fresh multi-MB tensor per layer and step
        # comes back from the allocator as new pages the kernel must fault in and zero, which
        # measured ~20x slower than the copy itself (decode step at batch 32: 110 -> 60 ms).
        # CUDA's caching allocator has no such cost, and graph capture needs fixed buffers.
        self._scratch = device.type == "cpu" if isinstance(device, torch.device) else str(device) == "cpu"
        self._sk: torch.Tensor | None = None
        self._sv: torch.Tensor | None = None

    def gather(self, layer: int, block_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """block_ids: [N] → K, V as [N * block_size, kv_heads, head_dim].

        On CPU the result lives in scratch buffers that the next `gather` overwrites: use it
        before gathering again (the attention function does)."""
        shape = (-1, self.k[layer].shape[2], self.k[layer].shape[3])
        if not self._scratch:
            return (self.k_rows[layer].index_select(0, block_ids).view(shape),
                    self.v_rows[layer].index_select(0, block_ids).view(shape))
        n = block_ids.numel()
        if self._sk is None or self._sk.shape[0] < n:
            rows = max(n, 2 * (self._sk.shape[0] if self._sk is not None else 32))
            self._sk = torch.empty((rows, self.k_rows[0].shape[1]), dtype=self.k[0].dtype)
            self._sv = torch.empty_like(self._sk)
        k = torch.index_select(self.k_rows[layer], 0, block_ids, out=self._sk[:n])
        v = torch.index_select(self.v_rows[layer], 0, block_ids, out=self._sv[:n])
        return k.view(shape), v.view(shape)

    @staticmethod
    def bytes_per_block(num_layers: int, block_size: int, num_kv_heads: int, head_dim: int,
                        dtype: torch.dtype) -> int:
        return 2 * num_layers * block_size * num_kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()

    def write(self, layer: int, slot_mapping: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> None:
        """key/value: [T, kv_heads, head_dim]; slot_mapping: [T] (long)."""
        self.k_flat[layer].index_copy_(0, slot_mapping, key)
        self.v_flat[layer].index_copy_(0, slot_mapping, value)

    def copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        """Copy whole blocks src -> dst in every layer (copy-on-write of forked sequences)."""
        if not copies:
            return
        dev = self.k[0].device
        src = torch.tensor([s for s, _ in copies], dtype=torch.long, device=dev)
        dst = torch.tensor([d for _, d in copies], dtype=torch.long, device=dev)
        for rows in (*self.k_rows, *self.v_rows):
            rows.index_copy_(0, dst, rows.index_select(0, src))
