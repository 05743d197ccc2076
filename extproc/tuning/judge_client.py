"""A small client for an OpenAI-compatible `/chat/completions` endpoint, for the judge.

Standard library only (`http.client`), one keep-alive connection per worker thread. A request
that gets 429 or 5xx, times out or loses its connection is retried up to `retries` times with
exponential back-off and jitter (`base * 2**n`, capped at `max_backoff`; a `Retry-After` in
seconds is honoured up to the same cap). 401, 403 and 404 mean the URL, model or credentials are
wrong for every pair: `JudgeError.fatal` is set and the run stops. Any other answer that is not
a usable completion is a `JudgeError` for that pair only.

The API key is sent as `Authorization: Bearer`; it is never part of an error message.
"""

from __future__ import annotations

import http.client
import random
import ssl
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
FATAL_STATUSES = frozenset({401, 403, 404})
#: Bytes of a response body read at most (a judge's verdict is short).
MAX_RESPONSE_BYTES = 4 * 1024 * 1024


class JudgeError(Exception):
    def __init__(self, reason: str, *, fatal: bool = False, attempts: int = 1) -> None:
        super().__init__(reason)
        self.reason = reason
        self.fatal = fatal
        self.attempts = attempts


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to ask; `url` is a base (`http://host:port/v1`) or the full
    `.../chat/completions` URL."""

    url: str
    model: str
    api_key: str = ""
    timeout: float = 60.0
    max_tokens: int = 400
    temperature: float = 0.0

    @property
    def chat_url(self) -> str:
        base = self.url.rstrip("/")
        return base if base.endswith("/chat/completions") else base + "/chat/completions"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    retries: int = 4
    base: float = 0.5
    max_backoff: float = 30.0

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_backoff)
        delay: float = self.base * 2 ** (attempt - 1) * (0.5 + rng.random())
        return min(delay, self.max_backoff)


@dataclass(frozen=True, slots=True)
class Reply:
    text: str | None
    refusal: str | None
    finish_reason: str | None
    tokens_in: int
    tokens_out: int
    attempts: int


def check_url(url: str) -> str | None:
    """Why a judge URL is unusable, or None."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"expected an http:// or https:// URL, got {url!r}"
    return None


class JudgeClient:
    """Thread-safe: each thread has its own connection. `stop` ends back-off waits early."""

    def __init__(
        self,
        endpoint: Endpoint,
        policy: RetryPolicy | None = None,
        *,
        seed: int = 0,
        stop: threading.Event | None = None,
    ) -> None:
        problem = check_url(endpoint.url)
        if problem:
            raise ValueError(problem)
        self.endpoint = endpoint
        self.policy = policy or RetryPolicy()
        self.stop = stop or threading.Event()
        self._local = threading.local()
        self._open: list[http.client.HTTPConnection] = []
        self._open_lock = threading.Lock()
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        parts = urlsplit(endpoint.chat_url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._https else 80)
        self._path = parts.path + (f"?{parts.query}" if parts.query else "")
        self.retries = 0  # retried attempts over all pairs (read after the run)

    def _connection(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self._https:
                conn = http.client.HTTPSConnection(
                    self._host,
                    self._port,
                    timeout=self.endpoint.timeout,
                    context=ssl.create_default_context(),
                )
            else:
                conn = http.client.HTTPConnection(
                    self._host, self._port, timeout=self.endpoint.timeout
                )
            self._local.conn = conn
            with self._open_lock:
                self._open.append(conn)
        return conn

    def close(self) -> None:
        """Close every thread's connection (after the workers are done)."""
        with self._open_lock:
            for conn in self._open:
                conn.close()
            self._open.clear()

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
            with self._open_lock:
                if conn in self._open:
                    self._open.remove(conn)

    def body(self, messages: list[dict[str, str]]) -> bytes:
        return orjson.dumps(
            {
                "model": self.endpoint.model,
                "messages": messages,
                "temperature": self.endpoint.temperature,
                "max_tokens": self.endpoint.max_tokens,
            }
        )

    def ask(self, messages: list[dict[str, str]]) -> Reply:
        body = self.body(messages)
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.endpoint.api_key:
            headers["Authorization"] = f"Bearer {self.endpoint.api_key}"
        attempt = 0
        while True:
            attempt += 1
            reason, retry_after = self._attempt(body, headers, attempt)
            if isinstance(reason, Reply):
                return reason
            if attempt > self.policy.retries or self.stop.is_set():
                raise JudgeError(f"{reason} after {attempt} attempt(s)", attempts=attempt)
            with self._rng_lock:
                delay = self.policy.delay(attempt, retry_after, self._rng)
                self.retries += 1
            if self.stop.wait(delay):
                raise JudgeError(f"{reason}; run stopped", attempts=attempt)

    def _attempt(
        self, body: bytes, headers: dict[str, str], attempt: int
    ) -> tuple[Reply | str, float | None]:
        """A reply, or a retryable reason and the server's Retry-After; raises JudgeError for
        answers that retrying cannot fix."""
        try:
            conn = self._connection()
            conn.request("POST", self._path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read(MAX_RESPONSE_BYTES + 1)
            status = response.status
            retry_after = _seconds(response.getheader("retry-after"))
            if response.getheader("connection", "").lower() == "close":
                self._drop_connection()
        except TimeoutError:
            self._drop_connection()
            return "judge timed out", None
        except (OSError, http.client.HTTPException) as exc:
            self._drop_connection()
            return f"judge connection failed ({type(exc).__name__})", None
        if status in RETRY_STATUSES:
            return f"judge HTTP {status}", retry_after
        if status in FATAL_STATUSES:
            detail = _error_message(data)
            raise JudgeError(f"judge HTTP {status}{detail}", fatal=True, attempts=attempt)
        if status != 200:
            raise JudgeError(f"judge HTTP {status}{_error_message(data)}", attempts=attempt)
        if len(data) > MAX_RESPONSE_BYTES:
            raise JudgeError("judge response too large", attempts=attempt)
        return _reply(data, attempt), None


def _seconds(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value.strip())
    except ValueError:
        return None  # an HTTP date: fall back to the policy's back-off


def _error_message(data: bytes) -> str:
    try:
        loaded = orjson.loads(data)
    except orjson.JSONDecodeError:
        return ""
    error = loaded.get("error") if isinstance(loaded, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return f": {message[:200]!r}" if isinstance(message, str) else ""


def _reply(data: bytes, attempts: int) -> Reply:
    try:
        loaded: Any = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise JudgeError("judge answered invalid JSON", attempts=attempts) from exc
    choices = loaded.get("choices") if isinstance(loaded, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise JudgeError("judge answer has no choices", attempts=attempts)
    message = choices[0].get("message")
    if not isinstance(message, dict):
        raise JudgeError("judge answer has no message", attempts=attempts)
    usage = loaded.get("usage") if isinstance(loaded.get("usage"), dict) else {}
    content, refusal = message.get("content"), message.get("refusal")
    finish = choices[0].get("finish_reason")
    return Reply(
        text=content if isinstance(content, str) else None,
        refusal=refusal if isinstance(refusal, str) else None,
        finish_reason=finish if isinstance(finish, str) else None,
        tokens_in=_int(usage.get("prompt_tokens")),
        tokens_out=_int(usage.get("completion_tokens")),
        attempts=attempts,
    )


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
