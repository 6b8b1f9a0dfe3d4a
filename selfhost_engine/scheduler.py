"""Continuous (iteration-level) batching with chunked prefill, priorities and preemption.

Each step: every running decode gets one token, then running partial prefills and newly admitted
requests share what is left of `max_num_batched_tokens` (prefill is cut into chunks). When KV
blocks run out, the lowest-priority, newest running sequence is preempted by recompute: its blocks
are freed (their prefix hashes stay findable) and it goes back to the waiting queue. With
speculative decoding a decode also carries the tokens the proposer drafted for it (verified in the
same forward), when the budget and the free blocks allow.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from .block_manager import BlockManager
from .config import EngineConfig
from .sequence import Sequence, SeqStatus
from .speculative import NgramProposer, NoDrafts


@dataclass
class SchedulerOutput:
    scheduled: list[tuple[Sequence, int]] = field(default_factory=list)  # decodes first
    num_decodes: int = 0
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(n for _, n in self.scheduled)


def _order(seq: Sequence) -> tuple[int, int]:
    return (int(seq.priority), seq.arrival_index)


class Scheduler:
    def __init__(self, config: EngineConfig, block_manager: BlockManager, proposer: NoDrafts | NgramProposer):
        self.config = config
        self.bm = block_manager
        self.proposer = proposer
        self.waiting: list[Sequence] = []   # sorted by (priority, arrival)
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    # ---- queue management -----------------------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        seq.status = SeqStatus.WAITING
        bisect.insort(self.waiting, seq, key=_order)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def finish(self, seq: Sequence) -> None:
        seq.status = SeqStatus.FINISHED
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.bm.free_seq(seq)

    def adopt(self, seqs: list[Sequence]) -> None:
        """Forked sequences join the running batch with the blocks they share."""
        for s in seqs:
            s.status = SeqStatus.RUNNING
        self.running.extend(seqs)

    def _draft(self, seq: Sequence, budget: int) -> list[int]:
        """Drafts for a decode, never past max_tokens, max_model_len, the budget or the free blocks."""
        room = min(seq.params.max_tokens - seq.num_output_tokens, self.config.max_model_len - seq.num_tokens) - 1
        drafts = self.proposer.propose(seq, min(room, budget - 1))
        return drafts if drafts and self.bm.can_allocate(seq, 1 + len(drafts)) else []

    def _preempt(self, seq: Sequence) -> None:
        seq.spec_token_ids = []
        self.running.remove(seq)
        self.bm.free_seq(seq)
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.add(seq)

    # ---- the policy -----------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        scheduled: set[int] = set()

        decodes = sorted((s for s in self.running if s.num_uncomputed == 1), key=_order)
        draft = len(self.running) <= self.config.speculative_disable_by_batch_size
        prefills = [s for s in self.running if s.num_uncomputed > 1]
        for seq in decodes + prefills:
            if seq.status is not SeqStatus.RUNNING or budget <= 0:
                continue
            seq.spec_token_ids = self._draft(seq, budget) if draft and seq.num_uncomputed == 1 else []
            n = min(seq.num_uncomputed + len(seq.spec_token_ids), budget)
            ok = True
            while not self.bm.can_allocate(seq, n):
                candidates = [s for s in self.running if id(s) not in scheduled]
                victim = max(candidates, key=_order)
                self._preempt(victim)
                out.preempted.append(victim)
                if victim is seq:
                    ok = False
                    break
            if not ok:
                continue
            self.bm.allocate_slots(seq, n)
            out.scheduled.append((seq, n))
            scheduled.add(id(seq))
            budget -= n
            if n == 1 and seq in decodes:
                out.num_decodes += 1

        # admit waiting requests (not in a step that had to preempt: memory is tight)
        while (self.waiting and budget > 0 and not out.preempted
               and len(self.running) + self.waiting[0].num_forks_pending < self.config.max_num_seqs):
            seq = self.waiting[0]
            cached, hashes = self.bm.find_cached_prefix(seq)
            num_cached = len(cached) * self.bm.block_size
            n = min(seq.num_tokens - num_cached, budget)
            if not self.bm.can_admit(cached, num_cached + n):
                break
            self.waiting.pop(0)
            self.bm.admit(seq, cached, hashes, n)
            if seq.num_preemptions == 0:
                seq.num_cached_tokens = num_cached
            seq.status = SeqStatus.RUNNING
            self.running.append(seq)
            out.scheduled.append((seq, n))
            scheduled.add(id(seq))
            budget -= n
        # decodes must lead the batch
        dec = [x for x in out.scheduled if x[0].num_uncomputed == 1 and x[1] == 1 and x[0].num_computed_tokens > 0]
        rest = [x for x in out.scheduled if not (x[0].num_uncomputed == 1 and x[1] == 1 and x[0].num_computed_tokens > 0)]
        out.scheduled = dec + rest
        out.num_decodes = len(dec)
        return out
