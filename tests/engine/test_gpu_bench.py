"""bench/gpu_engine.py keeps working: its CPU smoke mode (`--device cpu --tiny`) runs every
section that exists off CUDA, without errors, and prints its JSON and one-line summary."""
from __future__ import annotations

import json

from bench import gpu_engine


def test_gpu_bench_runs_on_cpu_tiny(capsys, tmp_path):
    out = tmp_path / "r.json"
    report = gpu_engine.main(["--device", "cpu", "--tiny", "--out", str(out)])
    printed = capsys.readouterr().out
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    errors = {k: v for k, v in report.items() if isinstance(v, dict) and "error" in v}
    assert not errors, errors
    assert report["model"]["shape"] == "tiny" and report["kv_pool"]["num_blocks"] > 0
    assert 0 < report["roofline"]["fraction_of_roofline"] < 1
    for c in gpu_engine.SMALL["concurrency"]:
        eng = report[f"throughput_c{c}"]["engine"]
        assert eng["requests"] == 2 * c and eng["output_tokens"] > 0
        assert report[f"throughput_c{c}"]["speedup_vs_static"] > 0
    assert report["prefix"]["ttft_prefix_hit_ms"] > 0
    assert printed.strip().splitlines()[-1].startswith("gpu_engine: ") and "errors: none" in printed


def test_gpu_bench_runs_the_real_model_on_cpu(capsys):
    """The first GPU run measures SmolLM2-135M-Instruct: its setup (fetch, load, chat reference
    before the engine takes the model) runs here on CPU with small workloads, and the engine's
    greedy chats equal transformers' token for token."""
    report = gpu_engine.main(["--device", "cpu", "--small", "--model", "smollm2"])
    printed = capsys.readouterr().out
    errors = {k: v for k, v in report.items() if isinstance(v, dict) and "error" in v}
    assert not errors, errors
    assert report["model"]["shape"] == "SmolLM2-135M-Instruct" and report["model"]["weights"] == "real"
    assert report["model"]["vocab_size"] == 49152 and report["model"]["num_hidden_layers"] == 30
    assert report["chat_check"]["all_tokens_equal"], report["chat_check"]
    assert "Paris" in report["chat_check"]["chats"][0]["engine"]
    assert all(report[f"throughput_c{c}"]["engine"]["output_tokens"] > 0 for c in gpu_engine.SMALL["concurrency"])
    assert "chats token-equal to transformers: True" in printed.strip().splitlines()[-1]
