"""Caller tokens and per-caller rate limits of the cascade.v1 API (pure parts)."""

from __future__ import annotations

import pytest

from extproc.services.auth import Authenticator, RateLimiter, TokenFileError, parse_tokens

GOOD = "a" * 16


def test_token_file_lines_and_errors_never_show_the_token() -> None:
    tokens = parse_tokens(f"# comment\n\nfeedback-bot {GOOD}\nci {'b' * 20}\n")
    assert tokens == {GOOD: "feedback-bot", "b" * 20: "ci"}
    for text, problem in [
        ("only-one-field\n", "expected"),
        ("bot short\n", "under 16"),
        (f"a {GOOD}\nb {GOOD}\n", "repeated"),
    ]:
        with pytest.raises(TokenFileError, match=problem) as info:
            parse_tokens(text, "tokens.txt")
        assert GOOD not in str(info.value) and "short" not in str(info.value)
        assert str(info.value).startswith("tokens.txt:")


def test_authenticator_needs_a_bearer_token_it_knows() -> None:
    auth = Authenticator({GOOD: "bot"})
    assert auth.caller({"authorization": f"Bearer {GOOD}"}) == "bot"
    assert auth.caller({"authorization": f"bearer {GOOD}"}) == "bot"
    for value in ("", GOOD, f"Basic {GOOD}", "Bearer ", f"Bearer {GOOD}x", "Bearer " + "a" * 15):
        assert auth.caller({"authorization": value}) is None
    assert auth.caller({}) is None


def test_rate_limiter_bursts_then_refills_per_caller() -> None:
    limit = RateLimiter(rate=2.0, burst=3.0)
    assert [limit.allow("a", now=0.0) for _ in range(4)] == [True, True, True, False]
    assert limit.allow("b", now=0.0)  # callers do not share a bucket
    assert not limit.allow("a", now=0.25)  # half a token
    assert limit.allow("a", now=0.5)
    assert [limit.allow("a", now=100.0) for _ in range(4)] == [True, True, True, False]


def test_rate_limiter_forgets_the_oldest_caller_beyond_its_bound() -> None:
    limit = RateLimiter(rate=0.0, burst=1.0, max_callers=2)
    assert limit.allow("a", now=0.0) and limit.allow("b", now=0.0)
    assert not limit.allow("a", now=0.0)
    assert limit.allow("c", now=0.0)  # evicts b (a was used more recently)
    assert limit.allow("b", now=0.0)  # b starts over with a full bucket
