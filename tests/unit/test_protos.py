"""extproc/_pb is the output of protos/generate.py for the committed protos/ (no drift)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_regenerating_the_protos_changes_nothing(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("generate", ROOT / "protos" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    written = module.generate(tmp_path)
    committed = ROOT / "extproc" / "_pb"
    for path in written:
        relative = path.relative_to(tmp_path)
        assert (committed / relative).read_text() == path.read_text(), (
            f"{relative} is stale: make protos"
        )
    expected = {p.relative_to(tmp_path) for p in written}
    present = {
        p.relative_to(committed) for p in committed.rglob("*") if p.suffix in (".py", ".pyi")
    }
    assert present == expected


def test_generated_imports_are_package_relative() -> None:
    from extproc._pb.cascade.v1 import cascade_pb2, cascade_pb2_grpc

    assert cascade_pb2.DESCRIPTOR.package == "cascade.v1"
    assert hasattr(cascade_pb2_grpc, "CascadeStub")
    source = (ROOT / "extproc" / "_pb" / "cascade" / "v1" / "cascade_pb2_grpc.py").read_text()
    assert "from . import cascade_pb2" in source
