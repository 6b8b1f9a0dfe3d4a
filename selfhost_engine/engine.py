"""The synchronous engine: add_request / step / abort / generate."""
from __future__ import annotations

import itertools
import time
import uuid
from dataclasses import dataclass, field

from .block_manager import BlockManager
from .config import EngineConfig
from .errors import EngineRequestError, PromptTooLongError
from .model_runner import ModelRunner
from .sampler import Sampler
from .scheduler import Scheduler
from .sequence import Priority, SamplingParams, Sequence, SeqStatus


@dataclass
class RequestOutput:
    request_id: str
    new_token_ids: list[int]
    delta_text: str
    finished: bool
    finish_reason: str | None
    num_prompt_tokens: int
    num_cached_tokens: int
    num_output_tokens: int
    seq: Sequence | None = None


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
    recent: list = field(default_factory=list)  # (time, prefill_tokens, decode_tokens) per step

    @property
    def kv_waste(self) -> float:
        if not self.kv_allocated_slot_steps:
            return 0.0
        return 1.0 - self.kv_stored_token_steps / self.kv_allocated_slot_steps


class LLMEngine:
    def __init__(self, config: EngineConfig, model=None, tokenizer=None):
        self.config = config
        if tokenizer is None:
            from transformers import AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained(config.model)
        self.tokenizer = tokenizer
        self.runner = ModelRunner(config, model)
        self.block_manager = BlockManager(config.num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(config, self.block_manager)
        self.sampler = Sampler(config.seed)
        self.seqs: dict[str, Sequence] = {}
        self.stats = EngineStats()
        self._counter = itertools.count()
        gen_cfg = getattr(self.runner.model, "generation_config", None)
        eos = getattr(gen_cfg, "eos_token_id", None)
        if eos is None:
            eos = tokenizer.eos_token_id
        self.eos_token_ids: set[int] = set(eos if isinstance(eos, (list, tuple)) else ([eos] if eos is not None else []))

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
                       arrival_index=next(self._counter))
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
        if seq.status is not SeqStatus.FINISHED:
            seq.finish_reason = "abort"
            self.scheduler.finish(seq)
            self.stats.num_aborted += 1
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
        logits, owners = self.runner.run(sched.scheduled, sched.num_decodes)
        # advance computed tokens and publish full blocks to the prefix cache
        st = self.stats
        n_pref = 0
        for i, (seq, n) in enumerate(sched.scheduled):
            seq.num_computed_tokens += n
            self.block_manager.commit_computed(seq)
            if i >= sched.num_decodes:
                n_pref += n
                if seq.num_computed_tokens < seq.num_tokens:
                    st.chunked_prefill_steps += 1
        sample_seqs = [sched.scheduled[i][0] for i in owners]
        tokens = self.sampler(logits, sample_seqs)
        outputs: list[RequestOutput] = []
        now = time.monotonic()
        for seq, tok in zip(sample_seqs, tokens):
            seq.token_ids.append(tok)
            if seq.first_token_time is None:
                seq.first_token_time = now
            seq.last_token_time = now
            outputs.append(self._postprocess(seq, tok))
        dt = time.perf_counter() - t0
        st.num_steps += 1
        st.generation_tokens += len(tokens)
        n_dec = sched.num_decodes
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

    def _postprocess(self, seq: Sequence, tok: int) -> RequestOutput:
        p = seq.params
        reason = None
        hide_token = False
        if not p.ignore_eos and tok in self.eos_token_ids:
            reason, hide_token = "stop", True
        elif tok in p.stop_token_ids:
            reason, hide_token = "stop", True
        elif seq.num_output_tokens >= p.max_tokens or seq.num_tokens >= self.config.max_model_len:
            reason = "length"
        if p.detokenize and not hide_token:
            self._detokenize(seq)
            if p.stop:
                start = max(0, seq.emitted_text_len - max(len(s) for s in p.stop))
                hit = [(seq.output_text.find(s, start), s) for s in p.stop]
                hit = [(i, s) for i, s in hit if i >= 0]
                if hit:
                    i, _ = min(hit)
                    seq.output_text = seq.output_text[:i]
                    reason = "stop"
        if reason is not None:
            seq.finish_reason = reason
            seq.finished_time = time.monotonic()
            self.scheduler.finish(seq)
            self.seqs.pop(seq.request_id, None)
        # emit text, holding back a possible partial stop string until the request ends
        upto = len(seq.output_text)
        if reason is None and p.stop:
            upto = max(seq.emitted_text_len, upto - (max(len(s) for s in p.stop) - 1))
        delta = seq.output_text[seq.emitted_text_len:upto]
        seq.emitted_text_len = upto
        return RequestOutput(seq.request_id, [tok], delta, reason is not None, reason,
                             seq.num_prompt_tokens, seq.num_cached_tokens, seq.num_output_tokens, seq)

    def _detokenize(self, seq: Sequence) -> None:
        out = seq.output_token_ids
        dec = self.tokenizer.decode
        prefix = dec(out[seq.prefix_offset:seq.read_offset], skip_special_tokens=True)
        full = dec(out[seq.prefix_offset:], skip_special_tokens=True)
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            seq.output_text += full[len(prefix):]
            seq.prefix_offset = seq.read_offset
            seq.read_offset = len(out)

    # ---- convenience ----------------------------------------------------------------------------
    def generate(self, prompts: list[str | list[int]], params: SamplingParams | list[SamplingParams] | None = None
                 ) -> list[dict]:
        """Run prompts to completion; returns dicts with token_ids, text, finish_reason (input order)."""
        if not isinstance(params, list):
            params = [params or SamplingParams()] * len(prompts)
        rids = [self.add_request(p, sp) for p, sp in zip(prompts, params)]
        results: dict[str, dict] = {}
        while self.has_unfinished():
            for o in self.step():
                if o.finished:
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
