"""CLI: `python -m selfhost_engine serve --model DIR` | `python -m selfhost_engine make-tiny-model DIR`."""
from __future__ import annotations

import argparse
import sys


def serve(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m selfhost_engine serve")
    p.add_argument("--model", required=True, help="model directory (transformers format)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--num-blocks", type=int, default=None)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    p.add_argument("--max-num-seqs", type=int, default=32)
    p.add_argument("--max-num-batched-tokens", type=int, default=2048)
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-prefix-caching", action="store_true")
    p.add_argument("--enforce-eager", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--speculative-ngram", type=int, default=0, metavar="K",
                   help="n-gram (prompt-lookup) speculative decoding: draft up to K tokens per step (0 = off)")
    p.add_argument("--ngram-min", type=int, default=2, help="shortest suffix n-gram looked up")
    p.add_argument("--ngram-max", type=int, default=4, help="longest suffix n-gram looked up")
    p.add_argument("--speculative-disable-by-batch-size", type=int, default=8,
                   help="draft nothing while more sequences than this are running")
    p.add_argument("--log-level", default="warning")
    a = p.parse_args(argv)

    import uvicorn

    from .async_engine import AsyncEngine
    from .server import create_app

    def factory() -> AsyncEngine:
        return AsyncEngine.from_model_dir(
            a.model, served_model_name=a.served_model_name, block_size=a.block_size, num_blocks=a.num_blocks,
            gpu_memory_utilization=a.gpu_memory_utilization, max_num_seqs=a.max_num_seqs,
            max_num_batched_tokens=a.max_num_batched_tokens, max_model_len=a.max_model_len, dtype=a.dtype,
            device=a.device, enable_prefix_caching=not a.no_prefix_caching, enforce_eager=a.enforce_eager,
            num_threads=a.threads, speculative_ngram=a.speculative_ngram, ngram_min=a.ngram_min,
            ngram_max=a.ngram_max, speculative_disable_by_batch_size=a.speculative_disable_by_batch_size)

    app = create_app(engine_factory=factory)
    uvicorn.run(app, host=a.host, port=a.port, log_level=a.log_level)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        print("commands: serve, make-tiny-model")
        return
    cmd, rest = argv[0], argv[1:]
    if cmd == "serve":
        serve(rest)
    elif cmd in ("make-tiny-model", "make_tiny_model"):
        from .tiny_model import main as tiny_main
        tiny_main(rest)
    else:
        raise SystemExit(f"unknown command {cmd!r} (expected serve or make-tiny-model)")


if __name__ == "__main__":
    main()
