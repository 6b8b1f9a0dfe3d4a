"""Start a real gateway server process on a free loopback port, for tests and benchmarks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.stubs.openai_stub import free_port

ROOT = Path(__file__).resolve().parent.parent


class GatewayProcess:
    def __init__(self, policy_path: str | Path, *, dev_key: str = "sk-test-dev", redis_url: str | None = None,
                 extra_args: list[str] | None = None, env: dict[str, str] | None = None, server: str = "granian",
                 cpus: set[int] | None = None) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.root_url = f"http://127.0.0.1:{self.port}"
        self.dev_key = dev_key
        args = [sys.executable, "-m", "gateway.cli", "serve", "--policy", str(policy_path), "--port", str(self.port),
                "--server", server]
        if redis_url:
            args += ["--redis-url", redis_url]
        args += extra_args or []
        full_env = {**os.environ, "GATEWAY_DEV_KEY": dev_key, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"gateway-{self.port}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, cwd=ROOT, env=full_env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True,
                                     preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)

    def wait_ready(self, timeout: float = 60.0) -> "GatewayProcess":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}: {self.log()}")
            try:
                if httpx.get(self.root_url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"gateway did not start: {self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # granian forks: stop the whole group
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()

    def __enter__(self) -> "GatewayProcess":
        return self.wait_ready()

    def __exit__(self, *_: object) -> None:
        self.stop()
