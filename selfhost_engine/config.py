"""Engine configuration."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EngineConfig:
    model: str = ""
    block_size: int = 16
    num_blocks: int | None = None            # explicit KV pool size; else derived (see below)
    gpu_memory_utilization: float = 0.85     # CUDA: fraction of total memory the process may use
    cpu_kv_cache_gb: float = 1.0             # CPU: cap on the KV pool when num_blocks is None
    max_num_seqs: int = 32
    max_num_batched_tokens: int = 2048
    max_model_len: int | None = None         # default: model's max_position_embeddings (capped 8192)
    dtype: str = "auto"                      # auto → float32 on CPU, bfloat16/float16 on CUDA
    device: str = "auto"                     # auto → cuda if available else cpu
    enable_prefix_caching: bool = True
    enforce_eager: bool = False              # CUDA: disable decode CUDA graphs
    cuda_graph_max_bs: int = 64
    num_threads: int | None = None           # CPU: torch threads (None → leave torch's default)
    seed: int = 0                            # engine RNG for unseeded sampling
    speculative_ngram: int = 0               # draft up to K tokens by n-gram lookup (0 = off)
    ngram_min: int = 2                       # shortest suffix looked up (1 drafts on chance matches)
    ngram_max: int = 4                       # longest suffix looked up (tried first)
    speculative_disable_by_batch_size: int = 8   # no drafts while more sequences run (each verifies alone)

    def __post_init__(self) -> None:
        if self.block_size <= 0:
            raise ValueError("block_size must be positive")
        if self.max_num_seqs <= 0 or self.max_num_batched_tokens <= 0:
            raise ValueError("max_num_seqs and max_num_batched_tokens must be positive")
        if self.speculative_ngram < 0 or not 1 <= self.ngram_min <= self.ngram_max:
            raise ValueError("speculative_ngram must be >= 0 and 1 <= ngram_min <= ngram_max")
