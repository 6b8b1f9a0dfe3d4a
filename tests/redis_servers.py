"""Private redis-server processes on free ports, for tests that break Redis (pause, kill, fail
over) or need a topology (Cluster, Sentinel). The shared Redis on 6379 is never touched."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from tests.stubs.openai_stub import free_port

REDIS_SERVER = shutil.which("redis-server") or "redis-server"
REDIS_CLI = shutil.which("redis-cli") or "redis-cli"


def _text(reply: object) -> str:
    """CLUSTER INFO as text, whichever shape this redis-py version parses it into."""
    if isinstance(reply, dict):
        return "\n".join(f"{k}:{v}" for k, v in reply.items())
    return reply.decode() if isinstance(reply, bytes) else str(reply)


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (redis.RedisError, OSError):
            pass
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


class RedisServer:
    """One redis-server (no persistence) on a free loopback port."""

    def __init__(self, *args: str, port: int | None = None, sentinel: bool = False) -> None:
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix=f"redis-{self.port}-"))
        if sentinel:
            conf = self.dir / "sentinel.conf"
            conf.write_text("\n".join(args) + "\n")
            cmd = [REDIS_SERVER, str(conf), "--sentinel", "--port", str(self.port), "--bind", "127.0.0.1"]
        else:
            cmd = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                   "--dir", str(self.dir), *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        _wait(lambda: redis.Redis(port=self.port, socket_timeout=0.5).ping(), 10, f"redis-server :{self.port}")

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2)

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


def _cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free and valid too."""
    for _ in range(200):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class Cluster:
    """Three masters, no replicas, slots spread by `redis-cli --cluster create`."""

    def __init__(self) -> None:
        self.nodes = [RedisServer("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                                  "--cluster-node-timeout", "2000", port=_cluster_port()) for _ in range(3)]
        subprocess.run([REDIS_CLI, "--cluster", "create", *[f"127.0.0.1:{n.port}" for n in self.nodes],
                        "--cluster-yes"], check=True, capture_output=True, timeout=30)
        _wait(lambda: all("cluster_state:ok" in _text(n.client().execute_command("CLUSTER", "INFO")) for n in self.nodes),
              15, "cluster_state:ok")
        self.url = "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def flush(self) -> None:
        for n in self.nodes:
            n.client().flushall()

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


class SentinelSet:
    """A master, one replica and one sentinel (quorum 1) watching them as `mymaster`."""

    def __init__(self, down_after_ms: int = 1000) -> None:
        self.master = RedisServer()
        self.replica = RedisServer("--replicaof", "127.0.0.1", str(self.master.port))
        _wait(lambda: self.replica.client().info("replication").get("master_link_status") == "up",
              10, "replica link")
        self.sentinel = RedisServer(
            f"sentinel monitor mymaster 127.0.0.1 {self.master.port} 1",
            f"sentinel down-after-milliseconds mymaster {down_after_ms}",
            "sentinel failover-timeout mymaster 5000",
            "sentinel parallel-syncs mymaster 1",
            sentinel=True,
        )
        self.url = f"redis+sentinel://127.0.0.1:{self.sentinel.port}/mymaster"

    def master_port(self) -> int:
        host, port = self.sentinel.client().execute_command("SENTINEL", "get-master-addr-by-name", "mymaster")
        return int(port)

    def stop(self) -> None:
        for s in (self.sentinel, self.replica, self.master):
            s.stop()
