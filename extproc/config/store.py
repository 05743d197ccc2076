"""`ConfigStore`: the current compiled snapshot, swapped atomically when the file changes.

The file is polled (stat, then a content hash when the stat changed), which also sees a Kubernetes
ConfigMap update: the mounted name is a symlink through `..data`, and `os.stat` follows it to the
new target. An invalid new file is logged and counted; the last good snapshot stays in use.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

from extproc.config.snapshot import Snapshot, compile_config
from extproc.core.errors import ConfigError

logger = logging.getLogger(__name__)

#: Called after every reload attempt with (ok, message).
ReloadListener = Callable[[bool, str], None]


def _fingerprint(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class ConfigStore:
    """Holds the current `Snapshot`; readers take `store.current` once per request."""

    def __init__(self, path: str | Path, snapshot: Snapshot) -> None:
        self.path = Path(path)
        self.current = snapshot
        self.listeners: list[ReloadListener] = []
        self._fingerprint = _fingerprint(self.path)
        self._digest = snapshot.digest

    @classmethod
    def open(cls, path: str | Path) -> ConfigStore:
        """Load the file once; raise `ConfigError` if it is unusable."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(str(path), "", f"cannot read file: {exc.strerror or exc}") from exc
        return cls(path, compile_config(data, str(path)))

    def poll(self) -> bool | None:
        """Reload if the file changed. True: swapped; False: new file refused; None: unchanged."""
        fingerprint = _fingerprint(self.path)
        if fingerprint == self._fingerprint:
            return None
        self._fingerprint = fingerprint
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            return self._refuse(f"{self.path}: cannot read file: {exc.strerror or exc}")
        digest = hashlib.sha256(data).hexdigest()[:12]
        if digest == self._digest:
            return None
        try:
            snapshot = compile_config(data, str(self.path))
        except ConfigError as exc:
            self._digest = digest
            return self._refuse(str(exc))
        self._digest = digest
        self.current = snapshot
        message = (
            f"config reloaded from {self.path} (digest {digest}, classifier {snapshot.stable})"
        )
        logger.info(message)
        self._notify(ok=True, message=message)
        return True

    def _refuse(self, reason: str) -> bool:
        message = f"config reload refused, keeping digest {self.current.digest}: {reason}"
        logger.error(message)
        self._notify(ok=False, message=message)
        return False

    def _notify(self, *, ok: bool, message: str) -> None:
        for listener in self.listeners:
            listener(ok, message)

    async def watch(self, interval: float = 1.0) -> None:
        """Poll forever (cancel the task to stop)."""
        while True:
            await asyncio.sleep(interval)
            try:
                self.poll()
            except Exception:  # a watcher must never die
                logger.exception("config watcher error")
