"""Per-request state (plain dataclasses)."""
from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field


class SeqStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Priority(enum.IntEnum):
    INTERACTIVE = 0
    BATCH = 1


@dataclass
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0                      # 0 = disabled
    seed: int | None = None
    max_tokens: int = 16
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    detokenize: bool = True
    n: int = 1                          # choices; the n sequences share the prompt's KV blocks
    logprobs: int | None = None         # None: off; k: report the sampled token's and the k best logprobs

    @property
    def greedy(self) -> bool:
        return self.temperature <= 1e-5 or self.top_k == 1


@dataclass(eq=False)
class Sequence:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    priority: Priority = Priority.INTERACTIVE
    tenant: str | None = None
    arrival_time: float = field(default_factory=time.monotonic)
    arrival_index: int = 0                       # tie-breaker: order of add_request
    status: SeqStatus = SeqStatus.WAITING
    token_ids: list[int] = field(default_factory=list)   # prompt + generated
    num_computed_tokens: int = 0                 # tokens whose KV is in the cache
    num_cached_tokens: int = 0                   # prompt tokens served from the prefix cache (first admission)
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)  # hashes of this seq's full blocks, in order
    num_preemptions: int = 0
    prefix_checked: bool = False
    finish_reason: str | None = None
    # detokenization state
    output_text: str = ""
    emitted_text_len: int = 0
    prefix_offset: int = 0
    read_offset: int = 0
    # timing
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None
    finished_time: float | None = None
    rng: object | None = None                    # random.Random for seeded sampling
    # n > 1: the first sequence of a request forks the others once its prompt is computed
    index: int = 0                               # choice index within the request
    group_id: str = ""                           # the request id (request_id is unique per sequence)
    num_forks_pending: int = 0
    children: list["Sequence"] = field(default_factory=list)
    spec_token_ids: list[int] = field(default_factory=list)  # drafted tokens verified this step
    draft_state: object | None = None            # the proposer's per-sequence index (speculative.py)

    def __post_init__(self) -> None:
        if not self.token_ids:
            self.token_ids = list(self.prompt_token_ids)
        self.group_id = self.group_id or self.request_id

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[len(self.prompt_token_ids):]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - len(self.prompt_token_ids)

    @property
    def num_uncomputed(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SeqStatus.FINISHED
