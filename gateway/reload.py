"""Hot reload of the policy: validate, then swap atomically; an invalid edit never takes traffic down.

The file is polled by content hash (not mtime), so an editor's partial write that fails to parse
is reported and ignored, and the completed write is picked up on the next poll. Requests hold the
runtime snapshot they started with, so a swap never disturbs one in flight; providers that the new
policy no longer uses are closed after a grace period for the same reason.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from policies.loader import PolicyError, parse_policy
from policies.schema import Policy

log = logging.getLogger("gateway.reload")


@dataclass(slots=True)
class ReloadResult:
    ok: bool
    changed: bool
    version: int
    error: PolicyError | None = None

    def as_json(self, path: str) -> dict:
        document: dict = {"ok": self.ok, "changed": self.changed, "version": self.version, "policy": path}
        if self.error is not None:
            document["error"] = {"file": self.error.file, "line": self.error.line, "key": self.error.key,
                                 "message": self.error.message, "text": str(self.error)}
        return document


class PolicyWatcher:
    def __init__(
        self,
        path: str | Path,
        apply: Callable[[Policy], Awaitable[None]],
        *,
        interval: float = 1.0,
        on_result: Callable[[ReloadResult], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.apply = apply
        self.interval = interval
        self.on_result = on_result
        self.version = 1
        self.last_error: PolicyError | None = None
        self.last_reload_at: float | None = None
        self._digest = self._read_digest()[1]
        self._lock = asyncio.Lock()
        self._task: asyncio.Task | None = None

    def _read_digest(self) -> tuple[str | None, str | None]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError:
            return None, None
        return text, hashlib.sha256(text.encode()).hexdigest()

    async def reload(self, *, force: bool = False) -> ReloadResult:
        """Reload if the file changed (or always with `force`); keep the old policy on any error."""
        async with self._lock:
            text, digest = self._read_digest()
            if text is None:
                error = PolicyError(str(self.path), None, "", "cannot read policy file")
                return self._report(ReloadResult(False, False, self.version, error))
            if digest == self._digest and not force:
                return ReloadResult(True, False, self.version)
            try:
                policy = parse_policy(text, str(self.path))
            except PolicyError as error:
                self._digest = digest  # report a broken file once, not on every poll
                return self._report(ReloadResult(False, False, self.version, error))
            await self.apply(policy)
            self._digest = digest
            self.version += 1
            return self._report(ReloadResult(True, True, self.version))

    def _report(self, result: ReloadResult) -> ReloadResult:
        self.last_reload_at = time.time()
        self.last_error = result.error
        if result.error is not None:
            log.error("policy reload rejected, the previous policy keeps serving: %s", result.error)
        elif result.changed:
            log.info("policy reloaded from %s (version %d)", self.path, result.version)
        if self.on_result is not None:
            self.on_result(result)
        return result

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.reload()
            except Exception:  # a bug in apply must not kill the watcher
                log.exception("policy reload failed")

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
