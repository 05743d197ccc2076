"""Text-preserving config edits and the atomic write (`extproc.config.editing`)."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml

from extproc.config import editing
from extproc.config.editing import (
    append_entry,
    dump_yaml,
    edit_scalars,
    format_number,
    insert_version,
    render_config,
    write_atomically,
)
from extproc.config.snapshot import DEFAULT_CONFIG, compile_config

TEXT = """\
# cascade config: comments and layout must survive an edit
classifier: v1   # the stable version
classifiers:
  # the versions
  v1:
    default: weak
    rules: []   # none yet

# end of the versions
canary:
  version: v1
  weight: 10        # percent
other: {a: 1}
"""


def test_edit_scalars_changes_only_the_values() -> None:
    edited = edit_scalars(TEXT, {("canary", "weight"): "50", ("classifier",): "v2"})
    assert edited == TEXT.replace("weight: 10 ", "weight: 50 ").replace(
        "classifier: v1 ", "classifier: v2 "
    )


def test_edit_scalars_needs_every_path_as_a_scalar() -> None:
    with pytest.raises(ValueError, match=r"canary\.key_header must be set"):
        edit_scalars(TEXT, {("canary", "key_header"): "x"})
    with pytest.raises(ValueError, match="canary must be set"):
        edit_scalars(TEXT, {("canary",): "x"})  # a mapping, not a scalar
    with pytest.raises(ValueError, match="empty document"):
        edit_scalars("", {("a",): "1"})


def test_format_number() -> None:
    assert [format_number(v) for v in (10, 10.0, 0, 12.5)] == ["10", "10", "0", "12.5"]


def test_append_entry_adds_at_the_end_of_the_block_and_keeps_the_rest() -> None:
    edited = append_entry(TEXT, "classifiers", "v2:\n  default: strong\n")
    assert edited is not None
    assert edited == TEXT.replace(
        "    rules: []   # none yet\n",
        "    rules: []   # none yet\n\n  v2:\n    default: strong\n",
    )
    document = yaml.safe_load(edited)
    assert list(document["classifiers"]) == ["v1", "v2"]
    assert document["canary"] == {"version": "v1", "weight": 10}


def test_append_entry_without_a_block_mapping() -> None:
    assert append_entry(TEXT, "missing", "a: 1\n") is None
    assert append_entry(TEXT, "other", "b: 2\n") is None  # flow style
    assert append_entry("classifiers:\nother: 1\n", "classifiers", "a: 1\n") is None  # empty


def test_insert_version_is_the_dumped_spec_in_classifiers() -> None:
    spec: dict[str, Any] = {"default": "weak", "rules": [{"kind": "chars", "gt": 900}]}
    edited = insert_version(TEXT, "v2", spec)
    assert edited == append_entry(TEXT, "classifiers", dump_yaml({"v2": spec}))
    assert edited is not None and "# end of the versions" in edited


def test_render_config_keeps_comments_or_says_it_did_not() -> None:
    text = DEFAULT_CONFIG.read_text(encoding="utf-8")
    stable = compile_config(text, "cascade.yaml")
    spec = stable.raw["classifiers"][stable.stable]
    new_text, kept = render_config(text, "cascade.yaml", "v99", spec)
    assert kept
    assert [line for line in text.splitlines() if line.lstrip().startswith("#")] == [
        line for line in new_text.splitlines() if line.lstrip().startswith("#")
    ]
    assert compile_config(new_text, "cascade.yaml").raw["classifiers"]["v99"] == spec
    flow_text = f"# a comment\n{yaml.safe_dump(stable.raw, default_flow_style=True)}"
    dumped, kept = render_config(flow_text, "c.yaml", "v99", spec)
    assert not kept
    assert "# a comment" not in dumped
    assert compile_config(dumped, "c.yaml").raw["classifiers"]["v99"] == spec


def test_write_atomically_replaces_the_content_and_the_inode(tmp_path: Path) -> None:
    path = tmp_path / "cascade.yaml"
    path.write_text("a: 1\n")
    os.chmod(path, 0o600)
    inode = path.stat().st_ino
    write_atomically(path, "a: 2\n")
    assert path.read_text() == "a: 2\n"
    assert path.stat().st_ino != inode
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cascade.yaml"]


def test_write_atomically_creates_a_file_and_takes_a_relative_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write_atomically(Path("new.yaml"), "b: 1\n")
    assert (tmp_path / "new.yaml").read_text() == "b: 1\n"
    assert stat.S_IMODE((tmp_path / "new.yaml").stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["new.yaml"]


def test_write_atomically_syncs_the_file_and_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[bool] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(editing.os, "fsync", fsync)
    write_atomically(tmp_path / "c.yaml", "c: 1\n")
    assert synced == [False, True]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "cascade.yaml"
    path.write_text("a: 1\n")
    inode = path.stat().st_ino
    with pytest.raises(UnicodeEncodeError):
        write_atomically(path, "a: 2\n# \ud800\n")  # a lone surrogate: the write raises
    assert path.read_text() == "a: 1\n"
    assert path.stat().st_ino == inode
    assert [p.name for p in tmp_path.iterdir()] == ["cascade.yaml"]


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_a_failure_before_the_rename_leaves_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    path = tmp_path / "cascade.yaml"
    path.write_text("a: 1\n")

    def fail(*_args: object) -> None:
        raise OSError(5, "simulated I/O error")

    monkeypatch.setattr(editing.os, failing, fail)
    with pytest.raises(OSError, match="simulated"):
        write_atomically(path, "a: 2\n")
    assert path.read_text() == "a: 1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["cascade.yaml"]
