"""One model load at a time in a process.

transformers 5.x is not thread-safe while it loads: `from_pretrained` swaps class-wide methods for
the duration of a load (`PreTrainedModel.tie_weights` becomes a no-op), so a model loaded on one
thread while another thread loads comes out with its tied weights never tied (SmolLM2's
`lm_head` left on the meta device: "Cannot copy out of meta tensor"), and two overlapping loads
can leave tying disabled for the rest of the process. The gateway loads several models on worker
threads at startup (this engine, and the MiniLM of embeddings, the semantic cache and the
router): each holds this lock while it builds or loads a model. Stdlib only, so any package can
import it without importing torch.

Also here: `build_once`, how a model folder is built into a cache shared by processes.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

MODEL_LOAD_LOCK = threading.RLock()


def build_once(cache: Path, name: str, marker: str, build: Callable[[Path], Path]) -> Path:
    """`cache/name`, built on first use and safe when several processes race: `build(tmp)` makes
    the folder (holding `marker`, written last) inside a temporary folder of its own next to the
    target and returns it; it is renamed into place, atomically on POSIX, and a process that
    loses the race discards its copy."""
    target = cache / name
    if (target / marker).exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-{uuid.uuid4().hex[:8]}-", dir=cache))
    try:
        built = build(tmp)
        try:
            os.rename(built, target)  # fails if another process renamed its copy into place first
        except OSError:
            if not (target / marker).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
