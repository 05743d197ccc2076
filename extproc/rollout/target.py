"""Where the canary's weight lives: `canary.weight` in a cascade config file.

A change is a targeted edit of the scalars concerned (comments and layout stay), validated with
the same compiler the server uses, then written atomically (`extproc.config.editing`), so the
servers hot-reload a complete file.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path
from typing import Protocol

from extproc.config.editing import edit_scalars, format_number, write_atomically
from extproc.config.snapshot import Snapshot, compile_config
from extproc.core.errors import ConfigError


class WeightTarget(Protocol):
    def current(self) -> float: ...

    def set(self, weight: float) -> None: ...

    def promote(self) -> None: ...


class ConfigFileTarget:
    """`canary.weight` in a cascade config file; `exec_command` runs after every write (e.g.
    `kubectl apply -k k8s/base` to push the file into the ConfigMap)."""

    def __init__(
        self, path: Path, *, exec_command: str | None = None, dry_run: bool = False
    ) -> None:
        self.path = path
        self.exec_command = exec_command
        self.dry_run = dry_run
        self._dry_weight: float | None = None

    def snapshot(self) -> Snapshot:
        return compile_config(self.path.read_bytes(), str(self.path))

    def current(self) -> float:
        if self._dry_weight is not None:
            return self._dry_weight
        canary = self.snapshot().canary
        if canary is None:
            raise ConfigError(str(self.path), "canary", "no canary in the config")
        return canary.weight

    def set(self, weight: float) -> None:
        self._apply({("canary", "weight"): format_number(weight)}, weight)

    def promote(self) -> None:
        """The canary becomes the stable classifier; the old stable stays as a 0 % canary."""
        snapshot = self.snapshot()
        assert snapshot.canary is not None
        self._apply(
            {
                ("classifier",): snapshot.canary.version,
                ("canary", "version"): snapshot.stable,
                ("canary", "weight"): "0",
            },
            0,
        )

    def _apply(self, edits: dict[tuple[str, ...], str], weight: float) -> None:
        text = edit_scalars(self.path.read_text(encoding="utf-8"), edits)
        compile_config(text, str(self.path))  # never write a file the servers would refuse
        if self.dry_run:
            self._dry_weight = weight
            return
        write_atomically(self.path, text)
        if self.exec_command:
            env = {
                **os.environ,
                "CASCADE_CONFIG_FILE": str(self.path),
                "CASCADE_CANARY_WEIGHT": format_number(weight),
            }
            result = subprocess.run(
                self.exec_command, shell=True, env=env, check=False, timeout=300
            )
            if result.returncode != 0:
                raise RuntimeError(
                    f"--exec {shlex.quote(self.exec_command)} exited {result.returncode}"
                )
