"""Generate the Python code of `protos/` into `extproc/_pb/` (run by `make protos`).

    python protos/generate.py [OUT_DIR]

grpcio-tools' protoc writes absolute imports (`from cascade.v1 import cascade_pb2`); they are
rewritten to package-relative ones so the code works as `extproc._pb.cascade.v1`. The output is
committed; tests/unit/test_protos.py checks that regenerating changes nothing.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = ROOT / "extproc" / "_pb"

_ABSOLUTE = re.compile(r"^from cascade\.v1 import (\w+) as (\w+)$", re.MULTILINE)


def generate(out: Path = OUT) -> list[Path]:
    from grpc_tools import protoc

    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    out.mkdir(parents=True, exist_ok=True)
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTOS}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            *sources,
        ]
    )
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")
    written = []
    for path in sorted(out.rglob("*.py*")):
        if path.suffix not in (".py", ".pyi"):
            continue
        text = _ABSOLUTE.sub(r"from . import \1 as \2", path.read_text())
        path.write_text(text)
        written.append(path)
    for folder in [out, *(p for p in out.rglob("*") if p.is_dir())]:
        init = folder / "__init__.py"
        if not init.exists():
            init.write_text("")
            written.append(init)
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else OUT
    for item in generate(target):
        print(item.relative_to(target))
