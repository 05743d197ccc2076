"""Per-tier answer quality of a labelled record, from its `evidence`: booleans or graded scores.

A record says how good each tier's model was on it: `evidence.strong_correct: true` (a boolean,
1 or 0), or a graded score (a judge's 1-10, a mean test score, any number). Where to look is a
`QualitySpec`:

- the default: `evidence.<tier>_correct`, and for the cheapest / top tier also
  `evidence.weak_correct` / `evidence.strong_correct` (the shared data's format);
- explicit fields per tier, e.g. `weak=mixtral_score,strong=gpt4_score` (`weak` and `strong` name
  the cheapest and the top tier; other names are tier names). A field without a dot is looked up
  under `evidence` first, then at the top of the record; a dotted path is taken as it is;
- a pattern with `{tier}`, e.g. `evidence.{tier}_score`.

A record has quality only when every tier has a value (booleans count 1 and 0). Scores are used
as they are: PGR and the curve metrics do not depend on the scale, quality and quality retained
are in the records' own units.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from extproc.tuning.dataset import Record, as_number


@dataclass(frozen=True, slots=True)
class QualitySpec:
    """Where each tier's quality is read from (see the module docstring)."""

    #: tier name (or `weak` / `strong` for the cheapest / top tier) -> field path
    fields: Mapping[str, str] = field(default_factory=dict)
    #: a path with `{tier}` in it, tried when `fields` names no field for a tier
    pattern: str = ""

    def describe(self) -> str:
        if not self.fields and not self.pattern:
            return "evidence.<tier>_correct"
        parts = [f"{tier}={path}" for tier, path in self.fields.items()]
        if self.pattern:
            parts.append(self.pattern)
        return ", ".join(parts)

    def paths(self, tiers: Sequence[str]) -> list[list[str]]:
        """For each tier (cheapest first), the field paths to try, in order."""
        found = []
        last = len(tiers) - 1
        for rank, tier in enumerate(tiers):
            alias = "weak" if rank == 0 else "strong" if rank == last else ""
            names: list[str] = []
            named = self.fields.get(tier) or (self.fields.get(alias) if alias else None)
            if named:
                names += [named] if "." in named else [f"evidence.{named}", named]
            elif self.pattern:
                names.append(self.pattern.replace("{tier}", tier))
            elif not self.fields:
                names.append(f"evidence.{tier}_correct")
                if alias:
                    names.append(f"evidence.{alias}_correct")
            found.append(names)
        return found


def parse_quality_spec(text: str) -> QualitySpec:
    """`weak=a,strong=b` or a `{tier}` pattern, or both: `evidence.{tier}_score,weak=w`."""
    fields: dict[str, str] = {}
    pattern = ""
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        tier, sep, path = part.partition("=")
        if sep:
            if not tier.strip() or not path.strip():
                raise ValueError(f"expected TIER=FIELD, got {part!r}")
            fields[tier.strip()] = path.strip()
        elif "{tier}" in part:
            pattern = part
        else:
            raise ValueError(f"expected TIER=FIELD or a pattern with {{tier}}, got {part!r}")
    return QualitySpec(fields, pattern)


DEFAULT_QUALITY = QualitySpec()


class QualityReader:
    """Reads per-tier quality for one config's tiers (the paths resolved once)."""

    def __init__(self, tiers: Sequence[str], spec: QualitySpec = DEFAULT_QUALITY) -> None:
        self.tiers = tuple(tiers)
        self.spec = spec
        self._paths = list(zip(self.tiers, spec.paths(self.tiers), strict=True))
        self.graded = False  # set once a non-boolean value was read

    def __call__(self, record: Record) -> dict[str, float] | None:
        result: dict[str, float] = {}
        for tier, names in self._paths:
            for name in names:
                value = record.get(name)
                if isinstance(value, bool):
                    result[tier] = float(value)
                    break
                number = as_number(value)
                if number is not None:
                    result[tier] = number
                    self.graded = True
                    break
            else:
                return None
        return result
