"""Compiled classifier versions: ordered rules over a request's text, first match wins.

Plain data built by `extproc.config` from YAML and read by `extproc.core.classify`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from extproc.core.keywords import KeywordMatcher

if TYPE_CHECKING:  # numpy loads only with a scorer step in the config
    from extproc.core.scorer import ScorerStep


class TextScope(enum.Enum):
    """Which message text a classifier version looks at."""

    ALL = "all"  # every message's text, joined with a space
    USER = "user"  # user messages only, joined with a space
    LAST_USER = "last_user"  # the last user message
    #: every message but the system and developer prompts (an IDE's long instructions)
    CONVERSATION = "conversation"
    #: the system and developer prompts only, joined with a space
    SYSTEM = "system"


#: Roles whose messages are instructions rather than conversation.
SYSTEM_ROLES = frozenset({"system", "developer"})


class RuleKind(enum.Enum):
    KEYWORD = "keyword"
    CHARS = "chars"
    BYTES = "bytes"
    MESSAGES = "messages"
    SCORER = "scorer"


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    kind: RuleKind
    tier: str
    gt: int | None = None
    lt: int | None = None
    matcher: KeywordMatcher | None = None
    #: A `scorer` rule's model and thresholds; its `tier` is the top tier it may choose.
    scorer: ScorerStep | None = None
    #: The rule's own text scope (None: the version's). A `messages` rule with its own scope
    #: counts the messages in that scope; without one it counts every message.
    text: TextScope | None = None

    def describe(self) -> str:
        """A short ASCII description of the condition, e.g. `chars>500`."""
        parts = []
        if self.gt is not None:
            parts.append(f"{self.kind.value}>{self.gt}")
        if self.lt is not None:
            parts.append(f"{self.kind.value}<{self.lt}")
        return "&".join(parts) or self.kind.value


@dataclass(frozen=True, slots=True)
class Classifier:
    """One compiled classifier version: ordered rules, first match wins, else `default`."""

    version: str
    text: TextScope
    default: str
    rules: tuple[Rule, ...]
    disabled_rules: tuple[str, ...] = ()
