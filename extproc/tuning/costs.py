"""What a request costs on each tier, from the config's prices and the record's token counts.

Cost of a request on a tier: `input_per_mtok * tokens_in / 1e6 + output_per_mtok * tokens_out
/ 1e6 + per_hour / 3600 * tokens_out / tokens_per_second`. Token counts come from the record
(`tokens_in`/`tokens_out`, or `usage.prompt_tokens`/`usage.completion_tokens`) when present, else
`tokens_in` is estimated from the text (`estimate_tokens`) and `tokens_out` is an assumed
`output_tokens` (default 256). A record's logged tokens are reused for every tier (an
approximation: another model would answer at another length). `per_hour` prices (reserved
capacity) need a throughput: `tokens_per_second` output tokens per second at full use (default
1,000); both assumptions are printed with every cost figure that depends on them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from extproc.config.snapshot import Price
from extproc.tuning.dataset import Record

DEFAULT_OUTPUT_TOKENS = 256
DEFAULT_TOKENS_PER_SECOND = 1000.0


def estimate_tokens(texts: Iterable[str]) -> int:
    """Input tokens of some texts: 4 ASCII characters per token, 1 token per other character.

    Close to what current BPE tokenizers give for English prose and code (~4 characters per
    token) and for Korean, Chinese and Japanese (~1 token per character), and never zero.
    """
    ascii_chars = other = 0
    for text in texts:
        size = len(text)
        if text.isascii():
            ascii_chars += size
        else:
            narrow = len(text.encode("ascii", "ignore"))  # the ASCII characters, at C speed
            other += size - narrow
            ascii_chars += narrow
    return max(1, math.ceil(ascii_chars / 4) + other)


@dataclass(frozen=True, slots=True)
class CostModel:
    """Tier prices plus the two assumptions needed when records lack token counts."""

    prices: Mapping[str, Price]
    output_tokens: float = DEFAULT_OUTPUT_TOKENS
    tokens_per_second: float = DEFAULT_TOKENS_PER_SECOND

    @property
    def priced(self) -> bool:
        return any(
            p.input_per_mtok or p.output_per_mtok or p.per_hour for p in self.prices.values()
        )

    @property
    def per_hour(self) -> bool:
        return any(p.per_hour for p in self.prices.values())

    def costs(self, record: Record) -> dict[str, float]:
        """The cost of this request on every tier."""
        return self.noted_costs(record)[0]

    def noted_costs(self, record: Record) -> tuple[dict[str, float], bool, bool]:
        """(costs on every tier, input tokens were estimated, output tokens were assumed)."""
        tokens_in = record.tokens_in
        estimated_in = tokens_in is None
        if tokens_in is None:
            if record.chat is not None:
                tokens_in = estimate_tokens(text for _role, text in record.chat.messages)
            else:
                tokens_in = math.ceil((record.number("chars") or 0) / 4)
        tokens_out = record.tokens_out
        assumed_out = tokens_out is None
        if tokens_out is None:
            tokens_out = self.output_tokens
        costs = {
            tier: price.input_per_mtok * tokens_in / 1e6
            + price.output_per_mtok * tokens_out / 1e6
            + price.per_hour / 3600 * tokens_out / self.tokens_per_second
            for tier, price in self.prices.items()
        }
        return costs, estimated_in, assumed_out

    def notes(self, estimated_in: bool, assumed_out: bool) -> list[str]:
        """The assumptions behind the cost figures, for reports."""
        if not self.priced:
            return ["no tier has a price in the config: costs are not computed"]
        notes = []
        if estimated_in:
            notes.append(
                "input tokens estimated from text (4 ASCII characters or 1 other character "
                "per token) where records carry no token counts"
            )
        if assumed_out:
            notes.append(
                f"output tokens assumed {self.output_tokens:g} per request where records "
                "carry none (--output-tokens)"
            )
        if self.per_hour:
            notes.append(
                f"per_hour prices assume {self.tokens_per_second:g} output tokens/s per tier "
                "at full use (--tokens-per-second)"
            )
        return notes
