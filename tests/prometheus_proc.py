"""Run a real Prometheus for tests: free loopback port, generated config, temp storage, killed at the end.

    with PrometheusProcess({"gateway": ["127.0.0.1:8080"]}, rule_files=[RULES]) as prom:
        prom.wait_for_targets_up()
        prom.query('up{job="gateway"}')

Needs the `prometheus` binary (Debian: `apt-get install -y prometheus`); `PROMETHEUS_BIN` overrides.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from tests.stubs.openai_stub import free_port


def prometheus_binary() -> str | None:
    return os.environ.get("PROMETHEUS_BIN") or shutil.which("prometheus")


def promtool_binary() -> str | None:
    return os.environ.get("PROMTOOL_BIN") or shutil.which("promtool")


class PrometheusProcess:
    def __init__(self, targets: dict[str, list[str]], *, rule_files: list[str | Path] = (),
                 scrape_interval: str = "1s", evaluation_interval: str = "1s") -> None:
        binary = prometheus_binary()
        if binary is None:
            raise FileNotFoundError("prometheus binary not found (apt-get install -y prometheus)")
        self.dir = Path(tempfile.mkdtemp(prefix="prometheus-test-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": scrape_interval, "scrape_timeout": scrape_interval,
                       "evaluation_interval": evaluation_interval},
            "rule_files": [str(Path(p).resolve()) for p in rule_files],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": list(addrs)}]}
                               for job, addrs in targets.items()],
        }
        self.config_path = self.dir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = self.dir / "prometheus.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={self.config_path}", f"--storage.tsdb.path={self.dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h",
             "--web.enable-lifecycle"],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.client = httpx.Client(base_url=self.url, timeout=10)

    def wait_ready(self, timeout: float = 30.0) -> "PrometheusProcess":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}: {self.log()}")
            try:
                if self.client.get("/-/ready").status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"prometheus not ready after {timeout}s: {self.log()}")

    def wait_for_targets_up(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = self.client.get("/api/v1/targets").json()["data"]["activeTargets"]
            if last and all(t["health"] == "up" for t in last):
                return
            time.sleep(0.25)
        raise TimeoutError(f"targets not up: {[(t['scrapeUrl'], t['health'], t['lastError']) for t in last or []]}")

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        """Instant query through the HTTP API; raises on a PromQL error."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        body = self.client.post("/api/v1/query", data=params).json()
        if body.get("status") != "success":
            raise AssertionError(f"{expr!r}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]["result"]

    def rules(self) -> list[dict]:
        groups = self.client.get("/api/v1/rules").json()["data"]["groups"]
        return [r for g in groups for r in g["rules"]]

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "PrometheusProcess":
        try:
            return self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *_: object) -> None:
        self.stop()
