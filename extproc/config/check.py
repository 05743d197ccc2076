"""Validation helpers shared by the config sections.

Each `Checker` method takes a value and its field path, and returns the value typed or raises a
`ConfigError` naming the file, the path and what was expected.

A collecting checker (`Checker(source, collect=True)`, what the config loader uses) reports every
error of a file, not only the first: unknown keys and missing required keys are all recorded,
and `attempt` runs one independent part (a section, a tier, a rule), records its error and goes
on with a placeholder. `finish` then raises them together (`ConfigErrors`), so a file with any
error is still refused as a whole.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from extproc.core.errors import ConfigError, ConfigErrors
from extproc.core.hostport import HostPort, parse_host_port

T = TypeVar("T")


class Checker:
    def __init__(self, source: str, *, collect: bool = False) -> None:
        self.source = source
        self.collect = collect
        #: Errors recorded so far (collecting mode), in the order they were found.
        self.errors: list[ConfigError] = []

    def fail(self, path: str, message: str) -> ConfigError:
        return ConfigError(self.source, path, message)

    def record(self, error: ConfigError) -> ConfigError:
        """Keep `error` for `finish` (once, however often it is re-raised and caught)."""
        if not any(known is error for known in self.errors):
            self.errors.append(error)
        return error

    def attempt(self, compile_part: Callable[[], T], placeholder: T) -> T:
        """Run one independent part; on a `ConfigError` record it and return `placeholder`."""
        if not self.collect:
            return compile_part()
        try:
            return compile_part()
        except ConfigError as exc:
            self.record(exc)
            return placeholder

    def finish(self) -> None:
        """Raise what was recorded: the error itself when there is one, else `ConfigErrors`."""
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise ConfigErrors(tuple(self.errors))

    def mapping(
        self,
        value: object,
        path: str,
        allowed: set[str],
        required: set[str] = frozenset(),  # type: ignore[assignment]
    ) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path, f"expected a mapping, got {type_name(value)}")
        found: list[ConfigError] = []
        for key in value:
            if not isinstance(key, str):
                found.append(self.fail(path, f"keys must be strings, got {key!r}"))
            elif key not in allowed:
                found.append(
                    self.fail(
                        join_path(path, key),
                        f"unknown key; expected one of: {', '.join(sorted(allowed))}",
                    )
                )
        missing = [
            self.fail(join_path(path, key), "is required")
            for key in sorted(required)
            if key not in value
        ]
        if not self.collect and (found or missing):
            raise (found or missing)[0]
        for error in [*found, *missing]:
            self.record(error)
        if missing:  # the caller reads required keys: stop this part (already recorded)
            raise missing[0]
        return value

    def string(self, value: object, path: str, *, empty: bool = False) -> str:
        if not isinstance(value, str):
            raise self.fail(path, f"expected a string, got {type_name(value)}")
        if not empty and not value.strip():
            raise self.fail(path, "expected a non-empty string")
        return value

    def integer(self, value: object, path: str, *, minimum: int = 0) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(path, f"expected an integer, got {type_name(value)}")
        if value < minimum:
            raise self.fail(path, f"expected an integer >= {minimum}, got {value}")
        return value

    def number(self, value: object, path: str, *, minimum: float = 0.0) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(path, f"expected a number, got {type_name(value)}")
        if value < minimum:
            raise self.fail(path, f"expected a number >= {minimum}, got {value}")
        return float(value)

    def percent(self, value: object, path: str) -> float:
        number = self.number(value, path)
        if number > 100:
            raise self.fail(path, f"expected a percentage 0..100, got {number}")
        return number

    def share(self, value: object, path: str) -> float:
        """A number in (0, 1]: a similarity or threshold."""
        number = self.number(value, path)
        if not 0 < number <= 1:
            raise self.fail(path, f"expected a number in (0, 1], got {number}")
        return number

    def boolean(self, value: object, path: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(path, f"expected true or false, got {type_name(value)}")
        return value

    def sequence(self, value: object, path: str, *, empty: bool = False) -> list[Any]:
        if not isinstance(value, list):
            raise self.fail(path, f"expected a list, got {type_name(value)}")
        if not empty and not value:
            raise self.fail(path, "expected a non-empty list")
        return value

    def strings(self, value: object, path: str, *, empty: bool = False) -> list[str]:
        """One string or a list of them (`ext_proc: host:port` or `ext_proc: [a, b]`)."""
        items = [value] if isinstance(value, str) else self.sequence(value, path, empty=empty)
        return [self.string(item, join_path(path, index)) for index, item in enumerate(items)]

    def choice(self, value: object, path: str, choices: tuple[str, ...]) -> str:
        text = self.string(value, path)
        if text not in choices:
            raise self.fail(path, f"expected one of {', '.join(choices)}, got {text!r}")
        return text

    def host_port(self, value: str, path: str, *, allow_zero: bool = False) -> HostPort:
        try:
            return parse_host_port(value, allow_zero=allow_zero)
        except ValueError as exc:
            raise self.fail(path, str(exc)) from None


def type_name(value: object) -> str:
    if value is None:
        return "null"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def join_path(path: str, key: str | int) -> str:
    """`tiers` + 0 -> `tiers[0]`; `tiers[0]` + `name` -> `tiers[0].name`; `` + `x` -> `x`."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key
