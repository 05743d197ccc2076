"""A backend's mutable state, shared with other threads: the script of upcoming responses and
the recorded requests. Every method takes one lock, so all of them are thread-safe."""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from cascade_dev.mock.faults import Fault, FaultSpec

__all__ = ["BackendState", "RecordedRequest"]


@dataclass(frozen=True)
class RecordedRequest:
    """What reached the backend. The body itself is not kept."""

    index: int  #: 0, 1, 2, ... per backend (kept across `reset`)
    connection: int  #: connection number; equal for requests sharing a keep-alive connection
    method: str
    path: str  #: the request target as received, query included
    headers: dict[str, str]  #: names lowercased; repeated headers joined with ", "
    body_length: int  #: bytes of body received (after chunked decoding)
    content_length: int | None  #: the declared `content-length`, None when absent
    chunked: bool  #: the body came with `transfer-encoding: chunked`
    model: str | None  #: `model` of a JSON body, None when absent or unparsable
    stream: bool  #: `"stream": true` in the body
    attempt: int  #: `x-envoy-attempt-count`, else 1
    status: int  #: the status answered; 0 when the connection was reset on purpose
    time: float  #: wall clock (`time.time()`) when the request was complete
    monotonic: float  #: `time.monotonic()` at the same moment (same clock in every process)
    sni: str | None = None  #: TLS: the server name the client asked for (None: plain HTTP)
    client_cert: str | None = None  #: TLS: common name of the client's certificate, if any

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class BackendState:
    """The script (`pending` entries, then `always`) and the last `max_recorded` requests."""

    def __init__(self, max_recorded: int) -> None:
        self._lock = threading.Lock()
        self._pending: deque[Fault] = deque()
        self._always: Fault | None = None
        self._requests: deque[RecordedRequest] = deque(maxlen=max_recorded)
        self._request_ids = itertools.count()

    def script(
        self, responses: Iterable[FaultSpec] = (), *, always: FaultSpec | None = None
    ) -> None:
        """Replace the script. Raises ValueError on a bad spec (and then changes nothing)."""
        parsed = [Fault.parse(spec) for spec in responses]
        forever = Fault.parse(always) if always is not None else None
        with self._lock:
            self._pending = deque(parsed)
            self._always = forever

    def script_from_json(self, body: bytes) -> None:
        """`{"responses": [...], "always": spec or null}` or a bare list, as JSON."""
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise ValueError("script body is not valid JSON") from exc
        if isinstance(data, list):
            data = {"responses": data}
        if not isinstance(data, dict) or set(data) - {"responses", "always"}:
            raise ValueError('expected {"responses": [...], "always": spec or null} or a list')
        responses = data.get("responses", [])
        if not isinstance(responses, list):
            raise ValueError("responses must be a list")
        self.script(responses, always=data.get("always"))

    def script_state(self) -> dict[str, Any]:
        with self._lock:
            return {
                "pending": [f.spec() for f in self._pending],
                "always": self._always.spec() if self._always else None,
            }

    def next_fault(self) -> Fault | None:
        """The next scripted response (consumed), else `always`, else None."""
        with self._lock:
            if self._pending:
                return self._pending.popleft()
            return self._always

    def reset(self) -> None:
        """Forget the script and the recorded requests."""
        with self._lock:
            self._pending.clear()
            self._always = None
            self._requests.clear()

    def record(self, **fields: Any) -> None:
        """Append a `RecordedRequest` of `fields`, numbered and timed now."""
        with self._lock:
            self._requests.append(
                RecordedRequest(
                    index=next(self._request_ids),
                    time=time.time(),
                    monotonic=time.monotonic(),
                    **fields,
                )
            )

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()
