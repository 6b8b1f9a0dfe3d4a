"""Fixed-size KV blocks: free list, ref counts and automatic prefix caching.

A block's hash chains its parent's hash with its token ids, so equal hashes mean equal prefixes
(checked again on the tokens at hit time). Only full, computed blocks are hashed. Freed blocks keep
their hash and stay findable until they are reused; the free list is LRU-ordered so the blocks
freed longest ago are reused first. A per-tenant salt in the first block's parent hash keeps
tenants from ever sharing KV. Forked sequences (n > 1) share every block of the prompt; the
first write into a shared, partly filled block copies it first (copy-on-write; the copies are
handed to the model runner with `take_copies`).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from .sequence import Sequence

_ROOT = hash(("selfhost-engine", "root"))


@dataclass(eq=False)
class Block:
    block_id: int
    ref_count: int = 0
    hash: int | None = None
    token_ids: tuple[int, ...] | None = None


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.hash_to_block: dict[int, int] = {}
        self.prefix_queries = 0   # prompt tokens looked up (vLLM counts tokens)
        self.prefix_hits = 0      # of which served from cache
        self.copies: list[tuple[int, int]] = []   # (src, dst) block copies the runner must do first

    # ---- accounting -------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self.free)

    def usage(self) -> float:
        return 1.0 - len(self.free) / self.num_blocks

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    @staticmethod
    def root_hash(tenant: str | None) -> int:
        return _ROOT if tenant is None else hash(("selfhost-engine", "tenant", tenant))

    # ---- prefix cache ---------------------------------------------------------------------------
    def find_cached_prefix(self, seq: Sequence) -> tuple[list[int], list[int]]:
        """Blocks (and their hashes) holding a computed prefix of seq. Never covers the last token."""
        if not self.enable_prefix_caching:
            return [], []
        bs = self.block_size
        toks = seq.token_ids
        parent = self.root_hash(seq.tenant)
        ids: list[int] = []
        hashes: list[int] = []
        for i in range((len(toks) - 1) // bs):
            chunk = tuple(toks[i * bs:(i + 1) * bs])
            h = hash((parent, chunk))
            bid = self.hash_to_block.get(h)
            if bid is None or self.blocks[bid].token_ids != chunk:
                break
            ids.append(bid)
            hashes.append(h)
            parent = h
        return ids, hashes

    def can_admit(self, cached: list[int], num_tokens_total: int) -> bool:
        """Enough free blocks to admit a sequence reusing `cached` and holding num_tokens_total?"""
        new = self.blocks_needed(num_tokens_total) - len(cached)
        revived = sum(1 for b in cached if self.blocks[b].ref_count == 0)  # these leave the free list
        return new + revived <= len(self.free)

    def admit(self, seq: Sequence, cached: list[int], hashes: list[int], num_new_tokens: int) -> None:
        assert not seq.block_table
        for bid in cached:
            b = self.blocks[bid]
            if b.ref_count == 0:
                del self.free[bid]
            b.ref_count += 1
        seq.block_table = list(cached)
        seq.block_hashes = list(hashes)
        seq.num_computed_tokens = len(cached) * self.block_size
        if self.enable_prefix_caching:
            self.prefix_queries += seq.num_tokens
            self.prefix_hits += seq.num_computed_tokens
        self.allocate_slots(seq, num_new_tokens)

    # ---- allocation ---------------------------------------------------------------------------
    def _shared_tail(self, seq: Sequence) -> bool:
        """Will the next write land in a partly filled block another sequence also holds?"""
        c = seq.num_computed_tokens
        return c % self.block_size != 0 and self.blocks[seq.block_table[c // self.block_size]].ref_count > 1

    def can_allocate(self, seq: Sequence, num_new_tokens: int) -> bool:
        need = self.blocks_needed(seq.num_computed_tokens + num_new_tokens) - len(seq.block_table)
        return need + self._shared_tail(seq) <= len(self.free)

    def allocate_slots(self, seq: Sequence, num_new_tokens: int) -> None:
        need = self.blocks_needed(seq.num_computed_tokens + num_new_tokens) - len(seq.block_table)
        if need + self._shared_tail(seq) > len(self.free):
            raise RuntimeError("out of KV blocks (caller must check can_allocate)")
        if self._shared_tail(seq):   # copy-on-write
            i = seq.num_computed_tokens // self.block_size
            src, dst = seq.block_table[i], self._pop_free()
            self.blocks[src].ref_count -= 1
            seq.block_table[i] = dst
            self.copies.append((src, dst))
        for _ in range(need):
            seq.block_table.append(self._pop_free())

    def take_copies(self) -> list[tuple[int, int]]:
        out, self.copies = self.copies, []
        return out

    def fork(self, parent: Sequence, child: Sequence) -> None:
        """child shares every block of parent (same computed tokens): ref counts go up."""
        for bid in parent.block_table:
            self.blocks[bid].ref_count += 1
        child.block_table = list(parent.block_table)
        child.block_hashes = list(parent.block_hashes)
        child.num_computed_tokens = parent.num_computed_tokens

    def trim(self, seq: Sequence) -> None:
        """Give back blocks past the sequence's tokens (drafted tokens that were rejected)."""
        keep = self.blocks_needed(seq.num_tokens)
        while len(seq.block_table) > keep:
            b = self.blocks[seq.block_table.pop()]
            b.ref_count -= 1
            if b.ref_count == 0:
                self.free[b.block_id] = None
                self.free.move_to_end(b.block_id, last=False)   # empty: reuse it first

    def _pop_free(self) -> int:
        bid, _ = self.free.popitem(last=False)  # least recently freed first
        b = self.blocks[bid]
        if b.hash is not None:
            if self.hash_to_block.get(b.hash) == bid:
                del self.hash_to_block[b.hash]
            b.hash = None
            b.token_ids = None
        b.ref_count = 1
        return bid

    def commit_computed(self, seq: Sequence) -> None:
        """Hash and publish every block of seq that is now full of computed KV."""
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        full = seq.num_computed_tokens // bs
        parent = seq.block_hashes[-1] if seq.block_hashes else self.root_hash(seq.tenant)
        for i in range(len(seq.block_hashes), full):
            chunk = tuple(seq.token_ids[i * bs:(i + 1) * bs])
            h = hash((parent, chunk))
            seq.block_hashes.append(h)
            b = self.blocks[seq.block_table[i]]
            if b.hash is None and h not in self.hash_to_block:
                b.hash = h
                b.token_ids = chunk
                self.hash_to_block[h] = b.block_id
            parent = h

    def free_seq(self, seq: Sequence) -> None:
        # reversed: a sequence's tail blocks become the first candidates for reuse
        for bid in reversed(seq.block_table):
            b = self.blocks[bid]
            b.ref_count -= 1
            assert b.ref_count >= 0
            if b.ref_count == 0:
                self.free[bid] = None
        seq.block_table = []
        seq.block_hashes = []
        seq.num_computed_tokens = 0

    def check_no_leaks(self) -> None:
        """Raise AssertionError unless every block is free with ref count zero."""
        bad = [b.block_id for b in self.blocks if b.ref_count != 0]
        assert not bad, f"blocks still referenced: {bad[:10]}"
        assert len(self.free) == self.num_blocks, f"free list has {len(self.free)}/{self.num_blocks}"
