"""Exceptions of the project.

    CascadeError
    ├── ConfigError            unusable config (names file, field path, expectation)
    │   └── ConfigErrors       several of them, from one file
    └── ChatParseError         a request body that is not a usable chat-completions request
        ├── BodyNotUtf8        not UTF-8 (fail open: default tier, reason `unparsed`)
        ├── BodyTooLarge       over the limit (fail open: default tier, reason `unparsed`)
        └── InvalidChatBody    not JSON, not an object, no `messages`, wrong types (HTTP 400)

Parse errors are values the hot path returns, never exceptions that escape a stream.
"""

from __future__ import annotations


class CascadeError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigError(CascadeError):
    """A configuration problem, located by file and field path."""

    def __init__(self, source: str, path: str, message: str) -> None:
        self.source = source
        self.path = path
        self.message = message
        where = f"{source}: {path}" if path else source
        super().__init__(f"{where}: {message}")


class ConfigErrors(ConfigError):
    """Every error found in one config file; reads as the first, `errors` has them all."""

    def __init__(self, errors: tuple[ConfigError, ...]) -> None:
        first = errors[0]
        super().__init__(first.source, first.path, first.message)
        self.errors = errors
        self.args = ("; ".join(str(e) for e in errors) + f" ({len(errors)} errors)",)


class ChatParseError(CascadeError):
    """A request body that cannot be classified."""

    #: Short machine-readable kind, used in logs, metrics and `details`.
    kind = "invalid_body"
    #: True when the request should still be served (on the default tier).
    fail_open = False


class BodyNotUtf8(ChatParseError):
    kind = "not_utf8"
    fail_open = True


class BodyTooLarge(ChatParseError):
    kind = "too_large"
    fail_open = True


class InvalidChatBody(ChatParseError):
    kind = "invalid_body"
