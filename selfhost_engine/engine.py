"""The synchronous engine: add_request / step / abort / generate."""
from __future__ import annotations

import itertools
import time
import uuid
from dataclasses import dataclass, field

from . import logprobs as lp
from .block_manager import BlockManager
from .config import EngineConfig
from .errors import EngineRequestError, PromptTooLongError
from .model_runner import ModelRunner
from .outputs import OutputProcessor, RequestOutput
from .sampler import Sampler
from .scheduler import Scheduler
from .sequence import Priority, SamplingParams, Sequence, SeqStatus
from .speculative import make_proposer


@dataclass
class EngineStats:
    num_steps: int = 0
    prompt_tokens: int = 0            # prompt tokens of finished + running requests (counted at admission)
    generation_tokens: int = 0
    prefill_tokens_computed: int = 0  # tokens run through the model as prefill (incl. recompute)
    decode_tokens_computed: int = 0
    prefill_time: float = 0.0
    decode_time: float = 0.0
    kv_stored_token_steps: int = 0    # Σ over steps of tokens held in KV by running seqs
    kv_allocated_slot_steps: int = 0  # Σ over steps of slots in their allocated blocks
    chunked_prefill_steps: int = 0    # prefill chunks that did not reach the end of the prompt
    num_aborted: int = 0              # requests aborted before they finished
    spec_drafts: int = 0              # verification steps of sequences that carried drafts
    spec_draft_tokens: int = 0        # drafted tokens verified
    spec_accepted_tokens: int = 0     # of which kept
    recent: list = field(default_factory=list)  # (time, prefill_tokens, decode_tokens) per step

    @property
    def kv_waste(self) -> float:
        if not self.kv_allocated_slot_steps:
            return 0.0
        return 1.0 - self.kv_stored_token_steps / self.kv_allocated_slot_steps


MAX_LOGPROBS = 20


class LLMEngine:
    def __init__(self, config: EngineConfig, model=None, tokenizer=None):
        self.config = config
        if tokenizer is None:
            from transformers import AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained(config.model)
        self.tokenizer = tokenizer
        self.runner = ModelRunner(config, model)
        self.block_manager = BlockManager(config.num_blocks, config.block_size, config.enable_prefix_caching)
        proposer = make_proposer(config.speculative_ngram, config.ngram_min, config.ngram_max)
        self.scheduler = Scheduler(config, self.block_manager, proposer)
        self.sampler = Sampler(config.seed)
        self.seqs: dict[str, Sequence] = {}   # request id -> its first sequence (children hang off it)
        self.stats = EngineStats()
        self._counter = itertools.count()
        gen_cfg = getattr(self.runner.model, "generation_config", None)
        eos = getattr(gen_cfg, "eos_token_id", None)
        if eos is None:
            eos = tokenizer.eos_token_id
        eos_ids = set(eos if isinstance(eos, (list, tuple)) else ([eos] if eos is not None else []))
        self.output = OutputProcessor(tokenizer, eos_ids, config.max_model_len)

    @property
    def eos_token_ids(self) -> set[int]:
        return self.output.eos_token_ids

    @eos_token_ids.setter
    def eos_token_ids(self, ids: set[int]) -> None:
        self.output.eos_token_ids = ids

    @classmethod
    def from_pretrained(cls, model_dir: str, **overrides) -> "LLMEngine":
        return cls(EngineConfig(model=str(model_dir), **overrides))

    # ---- requests -------------------------------------------------------------------------------
    def validate(self, prompt_token_ids: list[int], params: SamplingParams) -> None:
        if not prompt_token_ids:
            raise EngineRequestError("the prompt is empty", code="invalid_prompt", param="prompt")
        if any((not isinstance(t, int)) or t < 0 or t >= self.runner.vocab_size for t in prompt_token_ids):
            raise EngineRequestError("prompt contains token ids outside the vocabulary", param="prompt")
        if len(prompt_token_ids) >= self.config.max_model_len:
            raise PromptTooLongError(len(prompt_token_ids), self.config.max_model_len)
        if params.temperature < 0:
            raise EngineRequestError("temperature must be >= 0", param="temperature")
        if not 0 < params.top_p <= 1:
            raise EngineRequestError("top_p must be in (0, 1]", param="top_p")
        if params.top_k < 0:
            raise EngineRequestError("top_k must be >= 0", param="top_k")
        if params.max_tokens < 1:
            raise EngineRequestError("max_tokens must be at least 1", param="max_tokens")
        if not 1 <= params.n <= self.config.max_num_seqs:
            raise EngineRequestError(f"n must be between 1 and {self.config.max_num_seqs}", param="n")
        if params.logprobs is not None and not 0 <= params.logprobs <= MAX_LOGPROBS:
            raise EngineRequestError(f"logprobs must be between 0 and {MAX_LOGPROBS}", param="logprobs")

    def tokenize(self, prompt: str | list[int]) -> list[int]:
        """A completion prompt as the model was trained to see it: with the tokenizer's special
        tokens (BOS for Llama-family tokenizers), as transformers and vLLM do. Chat prompts come
        from the chat template, which already holds them, and are passed here as token ids."""
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt, add_special_tokens=True)
        return list(prompt)

    def add_request(self, prompt: str | list[int], params: SamplingParams | None = None, *,
                    request_id: str | None = None, priority: Priority | str = Priority.INTERACTIVE,
                    tenant: str | None = None, arrival_time: float | None = None) -> str:
        params = params or SamplingParams()
        ids = self.tokenize(prompt)
        self.validate(ids, params)
        if isinstance(priority, str):
            priority = Priority.BATCH if priority == "batch" else Priority.INTERACTIVE
        rid = request_id or uuid.uuid4().hex
        if rid in self.seqs:
            raise EngineRequestError(f"duplicate request id {rid}", param="request_id")
        seq = Sequence(rid, ids, params, priority=priority, tenant=tenant,
                       arrival_index=next(self._counter), num_forks_pending=params.n - 1)
        if arrival_time is not None:
            seq.arrival_time = arrival_time
        self.seqs[rid] = seq
        self.stats.prompt_tokens += len(ids)
        self.scheduler.add(seq)
        return rid

    def abort(self, request_id: str) -> bool:
        seq = self.seqs.pop(request_id, None)
        if seq is None:
            return False
        if not all(s.is_finished for s in (seq, *seq.children)):
            self.stats.num_aborted += 1
        for s in (seq, *seq.children):
            if not s.is_finished:
                s.finish_reason = "abort"
                self.scheduler.finish(s)
        return True

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    # ---- the loop -------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        sched = self.scheduler.schedule()
        if not sched.scheduled:
            return []
        t0 = time.perf_counter()
        now = time.monotonic()
        for seq, _ in sched.scheduled:
            if seq.first_scheduled_time is None:
                seq.first_scheduled_time = now
        logits, owners = self.runner.run(sched.scheduled, sched.num_decodes, self.block_manager.take_copies())
        # advance computed tokens (drafts: after verification) and publish full blocks to the prefix cache
        st = self.stats
        n_pref = n_dec = 0
        for i, (seq, n) in enumerate(sched.scheduled):
            if seq.spec_token_ids:     # a decode verifying drafts: advanced after verification
                n_dec += n
                continue
            if i < sched.num_decodes:
                n_dec += n
            else:
                n_pref += n
                st.chunked_prefill_steps += seq.num_computed_tokens + n < seq.num_tokens
            seq.num_computed_tokens += n
            self.block_manager.commit_computed(seq)
        # one logits row per sampling sequence, plus one per drafted token; forks share their parent's row
        seqs, rows, r = [], [], 0
        for i in owners:
            seq = sched.scheduled[i][0]
            for s in (seq, *self._fork(seq)):
                seqs.append(s)
                rows.extend(range(r, r + 1 + len(s.spec_token_ids)))
            r += 1 + len(seq.spec_token_ids)
        logits = logits[rows] if len(rows) != r else logits
        drafts = [s.spec_token_ids for s in seqs]
        tokens = self.sampler.verify(logits, seqs, drafts)
        logprobs = self._logprobs(logits, seqs, tokens)
        outputs: list[RequestOutput] = []
        now = time.monotonic()
        for seq, toks, d, lps in zip(seqs, tokens, drafts, logprobs):
            if d:   # the last real token and the kept drafts now have valid KV; the rest is rolled back
                st.spec_drafts += 1
                st.spec_draft_tokens += len(d)
                st.spec_accepted_tokens += len(toks) - 1
                seq.num_computed_tokens += len(toks)
                seq.spec_token_ids = []
            if seq.first_token_time is None:
                seq.first_token_time = now
            seq.last_token_time = now
            out = self.output.apply(seq, toks, lps)
            if d and not out.finished:
                self.block_manager.commit_computed(seq)
                self.block_manager.trim(seq)
            st.generation_tokens += len(out.new_token_ids)
            outputs.append(self._finish(out) if out.finished else out)
        dt = time.perf_counter() - t0
        st.num_steps += 1
        st.prefill_tokens_computed += n_pref
        st.decode_tokens_computed += n_dec
        if n_pref:
            st.prefill_time += dt * n_pref / (n_pref + n_dec)
        if n_dec:
            st.decode_time += dt * n_dec / (n_pref + n_dec)
        st.recent.append((now, n_pref, n_dec))
        if len(st.recent) > 512:
            del st.recent[:256]
        bs = self.config.block_size
        for seq in self.scheduler.running:
            st.kv_stored_token_steps += seq.num_computed_tokens
            st.kv_allocated_slot_steps += len(seq.block_table) * bs
        return outputs

    def _fork(self, seq: Sequence) -> list[Sequence]:
        """n > 1: once the prompt is computed, the other n - 1 choices share its blocks."""
        if not seq.num_forks_pending:
            return []
        kids = [Sequence(f"{seq.request_id}#{i}", seq.prompt_token_ids, seq.params, priority=seq.priority,
                         tenant=seq.tenant, arrival_time=seq.arrival_time, arrival_index=seq.arrival_index,
                         index=i, group_id=seq.group_id, num_cached_tokens=seq.num_cached_tokens,
                         first_scheduled_time=seq.first_scheduled_time)
                for i in range(len(seq.children) + 1, seq.num_forks_pending + 1)]
        seq.num_forks_pending = 0
        for k in kids:
            self.block_manager.fork(seq, k)
        seq.children.extend(kids)
        self.scheduler.adopt(kids)
        return kids

    def _logprobs(self, logits, seqs: list[Sequence], tokens: list[list[int]]) -> list[list[lp.TokenLogprob]]:
        rows, toks, tops, r = [], [], [], 0
        for seq, ts in zip(seqs, tokens):
            k = seq.params.logprobs
            if k is not None:
                rows.extend(range(r, r + len(ts)))
                toks.extend(ts)
                tops.extend([k] * len(ts))
            r += 1 + len(seq.spec_token_ids)
        flat = iter(lp.compute(logits, rows, toks, tops))
        return [[next(flat) for _ in ts] if seq.params.logprobs is not None else []
                for seq, ts in zip(seqs, tokens)]

    def _finish(self, out: RequestOutput) -> RequestOutput:
        seq = out.seq
        self.scheduler.finish(seq)
        head = self.seqs.get(seq.group_id)
        group = (head, *head.children) if head is not None else (seq,)
        out.request_finished = not (head and head.num_forks_pending) and all(s.is_finished for s in group)
        if out.request_finished:
            self.seqs.pop(seq.group_id, None)
        return out

    # ---- convenience ----------------------------------------------------------------------------
    def generate(self, prompts: list[str | list[int]], params: SamplingParams | list[SamplingParams] | None = None
                 ) -> list[dict]:
        """Run prompts to completion; returns dicts with token_ids, text, finish_reason (input order;
        with n > 1, the first choice's)."""
        if not isinstance(params, list):
            params = [params or SamplingParams()] * len(prompts)
        rids = [self.add_request(p, sp) for p, sp in zip(prompts, params)]
        results: dict[str, dict] = {}
        while self.has_unfinished():
            for o in self.step():
                if o.finished and o.index == 0:
                    s = o.seq
                    results[o.request_id] = dict(token_ids=s.output_token_ids, text=s.output_text,
                                                 finish_reason=s.finish_reason,
                                                 num_cached_tokens=s.num_cached_tokens)
        return [results[r] for r in rids]

    def load(self) -> dict:
        s = self.scheduler
        return dict(
            waiting=len(s.waiting),
            running=len(s.running),
            queued_prefill_tokens=sum(q.num_uncomputed for q in s.waiting)
            + sum(q.num_uncomputed for q in s.running if q.num_uncomputed > 1),
            active_decode_tokens=sum(q.num_tokens for q in s.running),
            kv_usage=round(self.block_manager.usage(), 6),
        )
