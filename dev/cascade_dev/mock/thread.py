"""`MockBackendThread`: a `MockBackend` on its own event loop in a daemon thread, for
synchronous callers (tests, benchmarks)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

from cascade_dev.mock.faults import FaultSpec
from cascade_dev.mock.server import MockBackend
from cascade_dev.mock.state import RecordedRequest

__all__ = ["MockBackendThread"]

T = TypeVar("T")


class MockBackendThread:
    """Runs a `MockBackend` on its own event loop in a daemon thread.

        with MockBackendThread(MockBackend("weak", ["qwen3-4b"])) as weak:
            url = weak.url
            weak.script(["503", "200"])
            ...
            assert weak.requests[-1].model == "qwen3-4b"

    `stop_backend()` closes the port while the thread lives on (connection refused);
    `start_backend()` binds the same port again.
    """

    def __init__(self, backend: MockBackend | None = None, *, timeout: float = 10.0) -> None:
        self.backend = backend if backend is not None else MockBackend()
        self.timeout = timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> MockBackendThread:
        if self._loop is not None:
            raise RuntimeError("already started")
        loop = asyncio.new_event_loop()
        thread = threading.Thread(
            target=self._run_loop,
            args=(loop,),
            name=f"mock-backend-{self.backend.name}",
            daemon=True,
        )
        self._loop, self._thread = loop, thread
        thread.start()
        try:
            self.call(self.backend.start())
        except BaseException:
            self.stop()
            raise
        return self

    @staticmethod
    def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the backend's loop and wait (at most `timeout`) for its result."""
        if self._loop is None:
            coro.close()
            raise RuntimeError("not started")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(self.timeout)

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            if self.backend.running:
                self.call(self.backend.stop())
        finally:
            self._loop = self._thread = None
            loop.call_soon_threadsafe(loop.stop)
            thread.join(self.timeout)

    def stop_backend(self) -> None:
        """Close the port (clients get "connection refused"); the thread keeps running."""
        self.call(self.backend.stop())

    def start_backend(self) -> None:
        """Listen again, on the same port."""
        self.call(self.backend.start())

    def __enter__(self) -> MockBackendThread:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # Delegates to the backend (all thread-safe).

    @property
    def port(self) -> int:
        return self.backend.port

    @property
    def url(self) -> str:
        return self.backend.url

    @property
    def requests(self) -> list[RecordedRequest]:
        return self.backend.requests

    def script(
        self, responses: Iterable[FaultSpec] = (), *, always: FaultSpec | None = None
    ) -> None:
        self.backend.script(responses, always=always)

    def reset(self) -> None:
        self.backend.reset()

    def clear_requests(self) -> None:
        self.backend.clear_requests()
