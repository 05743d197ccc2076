"""The short excerpt of a prompt that retry-pattern detection compares (kept in memory only)."""

from __future__ import annotations

#: Characters of the last user message kept for retry similarity (head and tail halves).
RETRY_EXCERPT = 512


def retry_excerpt(messages: tuple[tuple[str, str], ...]) -> str:
    """The last user message, whitespace-collapsed, at most `RETRY_EXCERPT` characters."""
    for role, text in reversed(messages):
        if role == "user" and text:
            cut = text
            if len(cut) > 4 * RETRY_EXCERPT:
                cut = cut[: 2 * RETRY_EXCERPT] + " " + cut[-2 * RETRY_EXCERPT :]
            cut = " ".join(cut.split())
            if len(cut) > RETRY_EXCERPT:
                half = RETRY_EXCERPT // 2
                cut = cut[:half] + " " + cut[-half:]
            return cut
    return ""
