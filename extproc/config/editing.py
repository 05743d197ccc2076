"""Editing a config file as text, so that comments and layout stay; writing it atomically.

Both writers of config files use these: `cascade canary` (the canary's weight and version, by
`edit_scalars`) and `cascade tune` (a new classifier version, by `render_config`). Edits change
only the bytes they must; `write_atomically` replaces the file the way the server's reloader
expects (a new inode, never half a file).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import yaml

from extproc.config.snapshot import compile_config
from extproc.core.errors import ConfigError

# ---------------------------------------------------------------------------------------------
# YAML text


class _Dumper(yaml.SafeDumper):
    """Indents block sequences under their key, as the packaged config does."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def dump_yaml(data: object) -> str:
    """Block-style YAML in the packaged config's style (key order kept, Unicode as is)."""
    return yaml.dump(
        data,
        Dumper=_Dumper,
        allow_unicode=True,
        sort_keys=False,
        default_flow_style=None,
        width=88,
    )


def format_number(value: float) -> str:
    """A number as a YAML scalar: `10`, not `10.0`; `12.5` as is."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _child(root: yaml.Node, key: str) -> yaml.Node | None:
    if not isinstance(root, yaml.MappingNode):
        return None
    for key_node, value_node in root.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
            found: yaml.Node = value_node
            return found
    return None


def edit_scalars(text: str, edits: dict[tuple[str, ...], str]) -> str:
    """Replace scalar values at key paths (e.g. `("canary", "weight")`) in YAML text, keeping
    everything else byte for byte. Every path must exist and hold a plain scalar."""
    root = yaml.compose(text)
    if root is None:
        raise ValueError("empty document")
    spans = []
    for path, value in edits.items():
        node: yaml.Node | None = root
        for key in path:
            node = _child(node, key) if node is not None else None
        if not isinstance(node, yaml.ScalarNode):
            raise ValueError(f"{'.'.join(path)} must be set in the file to be changed")
        spans.append((node.start_mark.index, node.end_mark.index, value))
    for start, end, value in sorted(spans, reverse=True):
        text = text[:start] + value + text[end:]
    return text


def append_entry(text: str, section: str, entry: str) -> str | None:
    """The text with the YAML `entry` (a mapping's key and value, unindented) added as the last
    entry of the top-level block mapping `section:`, indented as that block is; None when the
    text has no such block (absent, empty, or flow style). Blank lines and unindented comments
    that close the block stay after the new entry."""
    heading = re.compile(rf"^{re.escape(section)}:[ \t]*(#.*)?$")
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if heading.match(line)), None)
    if start is None:
        return None
    end = len(lines)
    indent = None
    for index in range(start + 1, len(lines)):
        line = lines[index]
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not line[0].isspace():
            end = index
            break
        if indent is None:
            indent = len(line) - len(line.lstrip(" "))
    if not indent:
        return None
    cut = end
    while cut > start + 1 and (not lines[cut - 1].strip() or lines[cut - 1].startswith("#")):
        cut -= 1
    block = [" " * indent + line if line else line for line in entry.splitlines()]
    merged = [*lines[:cut], "", *block, *lines[cut:]]
    return "\n".join(merged) + "\n"


def insert_version(text: str, version: str, spec: dict[str, Any]) -> str | None:
    """The config text with the version added at the end of `classifiers:`, or None."""
    return append_entry(text, "classifiers", dump_yaml({version: spec}))


def render_config(text: str, source: str, version: str, spec: dict[str, Any]) -> tuple[str, bool]:
    """(new config text, whether comments and layout were kept). Raises ConfigError.

    The edited text is compiled and compared with the intended document; when the text cannot
    be edited that way (e.g. a flow-style `classifiers: {...}`), the whole document is
    re-serialised instead, and comments are lost."""
    original = compile_config(text, source)
    expected = dict(original.raw)
    expected["classifiers"] = {**original.raw["classifiers"], version: spec}
    edited = insert_version(text, version, spec)
    if edited is not None:
        try:
            if compile_config(edited, source).raw == expected:
                return edited, True
        except ConfigError:
            pass
    dumped = dump_yaml(expected)
    compile_config(dumped, source)
    return dumped, False


# ---------------------------------------------------------------------------------------------
# the file


def write_atomically(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, fsync it, rename it over `path`, fsync
    the directory. Readers never see half a file and the reloader sees a new inode; on any
    failure the old file is left as it was and the temporary file is removed. Keeps the file's
    permission bits (a new file gets 0644)."""
    directory = path.parent
    mode = path.stat().st_mode & 0o7777 if path.exists() else 0o644
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable. The new file is in place already: a directory that cannot be
    opened or synced (some file systems refuse) does not undo the write."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
