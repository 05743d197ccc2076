"""Scorer artifacts: the file `cascade train` writes and a `scorer` rule names.

One JSON document (UTF-8, at most `MAX_BYTES`):

    {"format": "cascade-scorer", "format_version": 2,
     "tiers": ["weak", "strong"],                      # cheapest first
     "features": {"bits": 18, "head": 512, "tail": 512,
                  "families": [...], "dense": [...]},   # must equal extproc.core.features
     "standardize": {"mean": [...], "std": [...]},      # one per dense feature
     "boundaries": [                                    # len(tiers) - 1, cheapest first
        {"above": "weak", "bias": -1.2, "dense": [...], "platt": [a, b], "threshold": 0.5,
         "weights": "<base64 of zlib of 2**bits little-endian float32>",
         "weights_sha256": "<hex of the decoded float32 bytes>"}],
     "quantiles": [[share, threshold], ...],            # top boundary, held-out scores
     "training": {...}}                                 # what train saw; not read here

The config names the file and its sha256 (of the file's bytes); the file is read, hashed and
compiled with the config snapshot, so it reloads with the config and an artifact that is missing,
unreadable, of another format version, corrupt or not the one the config names makes the whole
config invalid (`ConfigError`; a running server keeps its last good snapshot). A relative path is
relative to the config file's directory.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from extproc.core.features import DENSE_NAMES, FAMILIES, HEAD, TAIL
from extproc.core.scorer import Scorer

FORMAT = "cascade-scorer"
#: 2: the hashed window is the user text's first and last 512 characters (1: 1,024 each).
FORMAT_VERSION = 2
MAX_BYTES = 5 * 1024 * 1024
MIN_BITS, MAX_BITS = 8, 20
_TOP_KEYS = {
    "format",
    "format_version",
    "tiers",
    "features",
    "standardize",
    "boundaries",
    "quantiles",
    "training",
}
#: Compiled artifacts by (resolved path, sha256): a reload re-reads and re-hashes the file but
#: does not decode an unchanged one again.
_CACHE: dict[tuple[str, str], Scorer] = {}
_CACHE_MAX = 8


class ArtifactError(ValueError):
    """Why an artifact cannot be used (the config loader turns it into a `ConfigError`)."""


def resolve(name: str, source: str) -> Path:
    """The artifact's path: as given when absolute, else beside the config file `source`."""
    path = Path(name)
    if path.is_absolute():
        return path
    config = Path(source)
    base = config.parent if not source.startswith("<") else Path()
    return base / path


def load_scorer(path: Path, sha256: str) -> Scorer:
    """Read, check against `sha256` (hex) and compile an artifact."""
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ArtifactError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(data) > MAX_BYTES:
        raise ArtifactError(f"{path} is larger than {MAX_BYTES} bytes")
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256.lower():
        raise ArtifactError(f"{path} has sha256 {digest}, the config names {sha256}")
    key = (str(path.resolve()), digest)
    cached = _CACHE.get(key)
    if cached is None:
        cached = parse_artifact(data, digest)
        if len(_CACHE) >= _CACHE_MAX:
            _CACHE.clear()
        _CACHE[key] = cached
    return cached


def parse_artifact(data: bytes, sha256: str = "") -> Scorer:
    """Validate and compile an artifact's bytes (raises `ArtifactError`)."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ArtifactError(f"not JSON: {exc}") from exc
    top = _mapping(doc, "", _TOP_KEYS)
    if top.get("format") != FORMAT:
        raise ArtifactError(f"format: expected {FORMAT!r}, got {top.get('format')!r}")
    if top.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"format_version: this server reads {FORMAT_VERSION}, got "
            f"{top.get('format_version')!r} (retrain with this version's `cascade train`)"
        )
    tiers = tuple(_strings(top.get("tiers"), "tiers"))
    if len(tiers) < 2 or len(set(tiers)) != len(tiers):
        raise ArtifactError("tiers: expected two or more distinct tier names")
    features = _mapping(
        top.get("features"), "features", {"bits", "head", "tail", "families", "dense"}
    )
    bits = features.get("bits")
    if not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ArtifactError(f"features.bits: expected an integer {MIN_BITS}..{MAX_BITS}")
    expected = {"head": HEAD, "tail": TAIL, "families": list(FAMILIES), "dense": list(DENSE_NAMES)}
    for name, value in expected.items():
        if features.get(name) != value:
            raise ArtifactError(
                f"features.{name}: the artifact was made with other features "
                f"({features.get(name)!r}; this server computes {value!r})"
            )
    standard = _mapping(top.get("standardize"), "standardize", {"mean", "std"})
    mean = _numbers(standard.get("mean"), "standardize.mean", len(DENSE_NAMES))
    std = _numbers(standard.get("std"), "standardize.std", len(DENSE_NAMES))
    if any(s <= 0 for s in std):
        raise ArtifactError("standardize.std: expected positive numbers")
    raw = top.get("boundaries")
    if not isinstance(raw, list) or len(raw) != len(tiers) - 1:
        raise ArtifactError(f"boundaries: expected a list of {len(tiers) - 1}")
    weights = np.empty((len(raw), 1 << bits), dtype=np.float32)
    dense, bias, platt, thresholds = [], [], [], []
    for k, item in enumerate(raw):
        where = f"boundaries[{k}]"
        spec = _mapping(
            item,
            where,
            {"above", "bias", "dense", "platt", "threshold", "weights", "weights_sha256"},
        )
        if spec.get("above") != tiers[k]:
            raise ArtifactError(f"{where}.above: expected {tiers[k]!r}")
        weights[k] = _weights(spec, where, 1 << bits)
        dense.append(tuple(_numbers(spec.get("dense"), f"{where}.dense", len(DENSE_NAMES))))
        bias.append(_numbers([spec.get("bias")], f"{where}.bias", 1)[0])
        a, b = _numbers(spec.get("platt"), f"{where}.platt", 2)
        if a <= 0:
            raise ArtifactError(f"{where}.platt: the slope must be positive (monotone)")
        platt.append((a, b))
        thresholds.append(_probability(spec.get("threshold"), f"{where}.threshold"))
    quantiles = _quantiles(top.get("quantiles"))
    weights.setflags(write=False)
    return Scorer(
        tiers=tiers,
        bits=bits,
        weights=weights,
        dense=tuple(dense),
        mean=tuple(mean),
        std=tuple(std),
        bias=tuple(bias),
        platt=tuple(platt),
        thresholds=tuple(thresholds),
        quantiles=quantiles,
        sha256=sha256,
    )


def encode_weights(values: np.ndarray[Any, Any]) -> tuple[str, str]:
    """(base64 of zlib of little-endian float32, sha256 of the float32 bytes)."""
    raw = np.ascontiguousarray(values, dtype="<f4").tobytes()
    return base64.b64encode(zlib.compress(raw, 9)).decode("ascii"), hashlib.sha256(raw).hexdigest()


def dump_artifact(document: Mapping[str, Any]) -> bytes:
    """An artifact document as bytes (checked by `parse_artifact` first)."""
    data = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    parse_artifact(data)
    return data


def _weights(spec: Mapping[str, Any], where: str, size: int) -> np.ndarray[Any, Any]:
    text = spec.get("weights")
    if not isinstance(text, str):
        raise ArtifactError(f"{where}.weights: expected a base64 string")
    try:
        raw = zlib.decompress(base64.b64decode(text, validate=True), bufsize=size * 4)
    except (binascii.Error, zlib.error, ValueError) as exc:
        raise ArtifactError(f"{where}.weights: corrupt ({exc})") from exc
    if len(raw) != size * 4:
        raise ArtifactError(f"{where}.weights: expected {size} float32 values")
    if hashlib.sha256(raw).hexdigest() != spec.get("weights_sha256"):
        raise ArtifactError(f"{where}.weights: does not match weights_sha256 (corrupt)")
    values = np.frombuffer(raw, dtype="<f4")
    if not np.isfinite(values).all():
        raise ArtifactError(f"{where}.weights: not finite")
    return values


def _mapping(value: object, where: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ArtifactError(f"{where or 'document'}: expected an object")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise ArtifactError(f"{where or 'document'}: unknown keys {', '.join(unknown)}")
    return value


def _strings(value: object, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ArtifactError(f"{where}: expected a list of names")
    return value


def _numbers(value: object, where: str, count: int) -> list[float]:
    if (
        not isinstance(value, list)
        or len(value) != count
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        or not all(math.isfinite(v) for v in value)
    ):
        raise ArtifactError(f"{where}: expected {count} finite numbers")
    return [float(v) for v in value]


def _probability(value: object, where: str) -> float:
    (number,) = _numbers([value], where, 1)
    if not 0.0 < number < 1.0:
        raise ArtifactError(f"{where}: expected a probability strictly between 0 and 1")
    return number


def _quantiles(value: object) -> tuple[tuple[float, float], ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ArtifactError("quantiles: expected a list of [share, threshold]")
    pairs: list[tuple[float, float]] = []
    for index, item in enumerate(value):
        share, threshold = _numbers(item, f"quantiles[{index}]", 2)
        pairs.append((share, threshold))
    shares = [s for s, _ in pairs]
    if shares != sorted(shares) or not all(0.0 <= s <= 1.0 for s in shares):
        raise ArtifactError("quantiles: shares must be within 0..1 and ascending")
    return tuple(pairs)


def scorer_tiers_fit(scorer: Scorer, tiers: Sequence[str]) -> bool:
    """The artifact's tiers appear in the config's, in the same order."""
    positions = [tiers.index(t) if t in tiers else -1 for t in scorer.tiers]
    return -1 not in positions and positions == sorted(positions)
