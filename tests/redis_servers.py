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
    """Three masters (each with `replicas` replicas), slots spread by `redis-cli --cluster create`."""

    def __init__(self, replicas: int = 0, node_timeout_ms: int = 2000) -> None:
        self.nodes = [RedisServer("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                                  "--cluster-node-timeout", str(node_timeout_ms), port=_cluster_port())
                      for _ in range(3 * (1 + replicas))]
        subprocess.run([REDIS_CLI, "--cluster", "create", *[f"127.0.0.1:{n.port}" for n in self.nodes],
                        "--cluster-replicas", str(replicas), "--cluster-yes"], check=True, capture_output=True, timeout=30)
        _wait(lambda: all("cluster_state:ok" in _text(n.client().execute_command("CLUSTER", "INFO")) for n in self.nodes),
              15, "cluster_state:ok")
        if replicas:
            _wait(lambda: len(self.replicas()) == 3 * replicas and all(
                r.client().info("replication").get("master_link_status") == "up" for r in self.replicas()),
                15, "replica links")
        self.url = "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:3])

    def _view(self) -> list[list[str]]:
        """CLUSTER NODES as a live node sees it (paused or dead nodes are skipped)."""
        for node in self.nodes:
            if node.proc.poll() is None:
                try:
                    text = redis.Redis(port=node.port, socket_timeout=0.3).execute_command("CLUSTER", "NODES")
                except (redis.RedisError, OSError):
                    continue
                return [line.split() for line in _text(text).splitlines() if line.strip()]
        raise RuntimeError("no cluster node answers")

    def _by_port(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    def masters(self) -> list[RedisServer]:
        return [self._by_port(int(f[1].split("@")[0].rsplit(":", 1)[1])) for f in self._view()
                if "master" in f[2] and "fail" not in f[2]]

    def owner(self, key: str) -> RedisServer:
        """The master that serves `key`'s slot, as a live node sees it."""
        slot = redis.Redis(port=self.masters()[0].port, socket_timeout=1).execute_command("CLUSTER", "KEYSLOT", key)
        for f in self._view():
            if "master" in f[2] and "fail" not in f[2]:
                for part in f[8:]:
                    start, _, end = part.partition("-")
                    if start.isdigit() and int(start) <= slot <= int(end or start):
                        return self._by_port(int(f[1].split("@")[0].rsplit(":", 1)[1]))
        raise LookupError(key)

    def replica_of(self, master: RedisServer) -> RedisServer:
        ids = {f[0]: f for f in self._view()}
        master_id = next(i for i, f in ids.items() if f[1].startswith(f"127.0.0.1:{master.port}@"))
        return next(self._by_port(int(f[1].split("@")[0].rsplit(":", 1)[1])) for f in ids.values() if f[3] == master_id)

    def replicas(self) -> list[RedisServer]:
        return [self._by_port(int(f[1].split("@")[0].rsplit(":", 1)[1])) for f in self._view() if "slave" in f[2]]

    def flush(self) -> None:
        for n in self.masters():
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
