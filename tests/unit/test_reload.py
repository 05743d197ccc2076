"""Hot reload: atomic rename, ConfigMap-style symlink swap, broken files keep the last good."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from extproc.config.store import ConfigStore
from extproc.core.errors import ConfigError

CONFIG = """
tiers: [{{name: weak}}, {{name: strong}}]
classifier: {version}
classifiers:
  {version}: {{default: weak}}
"""


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_reload_after_atomic_rename(tmp_path: Path) -> None:
    path = tmp_path / "cascade.yaml"
    path.write_text(CONFIG.format(version="v1"))
    store = ConfigStore.open(path)
    events: list[bool] = []
    store.listeners.append(lambda ok, _msg: events.append(ok))
    assert store.poll() is None
    write_atomic(path, CONFIG.format(version="v2"))
    assert store.poll() is True
    assert store.current.stable == "v2"
    assert store.poll() is None
    assert events == [True]


def test_reload_through_configmap_symlink_swap(tmp_path: Path) -> None:
    # Kubernetes layout: name -> ..data/name, ..data -> ..<timestamp>/
    mount = tmp_path / "mount"
    mount.mkdir()
    first = mount / "..2026_01"
    first.mkdir()
    (first / "cascade.yaml").write_text(CONFIG.format(version="v1"))
    (mount / "..data").symlink_to("..2026_01")
    (mount / "cascade.yaml").symlink_to("..data/cascade.yaml")
    store = ConfigStore.open(mount / "cascade.yaml")
    second = mount / "..2026_02"
    second.mkdir()
    (second / "cascade.yaml").write_text(CONFIG.format(version="v8"))
    (mount / "..data_tmp").symlink_to("..2026_02")
    os.replace(mount / "..data_tmp", mount / "..data")
    assert store.poll() is True
    assert store.current.stable == "v8"


def test_broken_file_keeps_last_good_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "cascade.yaml"
    path.write_text(CONFIG.format(version="v1"))
    store = ConfigStore.open(path)
    good = store.current
    messages: list[str] = []
    store.listeners.append(lambda _ok, msg: messages.append(msg))
    write_atomic(path, CONFIG.format(version="v1").replace("default: weak", "default: nope"))
    assert store.poll() is False
    assert store.current is good
    assert "refused" in caplog.text
    assert "classifiers.v1.default" in messages[0]
    # unchanged broken file is not re-reported; a fixed file is taken
    assert store.poll() is None
    write_atomic(path, CONFIG.format(version="v3"))
    assert store.poll() is True
    assert store.current.stable == "v3"


def test_deleted_file_keeps_last_good(tmp_path: Path) -> None:
    path = tmp_path / "cascade.yaml"
    path.write_text(CONFIG.format(version="v1"))
    store = ConfigStore.open(path)
    path.unlink()
    assert store.poll() is False
    assert store.current.stable == "v1"


def test_open_refuses_broken_file(tmp_path: Path) -> None:
    path = tmp_path / "cascade.yaml"
    path.write_text("tiers: {")
    with pytest.raises(ConfigError):
        ConfigStore.open(path)


async def test_watch_task_picks_up_changes(tmp_path: Path) -> None:
    path = tmp_path / "cascade.yaml"
    path.write_text(CONFIG.format(version="v1"))
    store = ConfigStore.open(path)
    task = asyncio.create_task(store.watch(interval=0.01))
    try:
        write_atomic(path, CONFIG.format(version="v2"))
        for _ in range(200):
            if store.current.stable == "v2":
                break
            await asyncio.sleep(0.01)
        assert store.current.stable == "v2"
    finally:
        task.cancel()
