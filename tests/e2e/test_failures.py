"""What happens when the classifier dies or restarts: requests keep being served."""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from tests.e2e.harness import Gateway, wait_for


def test_classifier_killed_requests_served_by_default_tier(own_gateway: Gateway) -> None:
    gateway = own_gateway
    assert gateway.chat("refactor this").headers["x-mock-backend"] == "strong"
    gateway.stop_classifier(signal.SIGKILL)
    for text, headers in (
        ("refactor this", {}),
        ("hi", {"x-cascade-tier": "strong"}),  # spoofing must not work while it is down
    ):
        reply = gateway.chat(text, headers=headers)
        assert reply.status == 200, reply.body
        assert reply.headers["x-mock-backend"] == "weak"
        assert reply.headers["x-cascade-served-tier"] == "weak"
    # and it comes back
    gateway.start_classifier()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if gateway.chat("refactor this").headers["x-mock-backend"] == "strong":
            break
        time.sleep(0.2)
    assert gateway.chat("refactor this").headers["x-mock-backend"] == "strong"


def test_restart_under_load_loses_no_request(own_gateway: Gateway) -> None:
    """SIGTERM the classifier while 4 clients send requests, start a new one: every request 200."""
    gateway = own_gateway
    stop = threading.Event()
    results: list[tuple[int, str]] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        for n in range(5000):  # bounded in count (failed-open requests are quick) …
            if stop.is_set():
                return
            text = "debug it" if (index + n) % 2 else "hello"
            reply = gateway.chat(text)
            with lock:
                results.append((reply.status, reply.headers.get("x-cascade-classifier", "")))

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(client, i) for i in range(4)]
        wait_for(lambda: len(results) >= 20, 30, "load before the restart")
        code = gateway.stop_classifier(signal.SIGTERM)
        gateway.start_classifier()
        restarted = len(results)
        # classified again by the new process, under the same load
        wait_for(
            lambda: sum(1 for _, v in results[restarted:] if v == "v7") >= 20,
            30,
            "classified requests after the restart",
        )
        stop.set()  # … and in time
        for future in futures:
            future.result(timeout=60)
    assert code == 0
    statuses = [status for status, _ in results]
    assert len(statuses) > 50
    assert statuses.count(200) == len(statuses), {s: statuses.count(s) for s in set(statuses)}
    # classified both before and after the restart
    assert sum(1 for _, version in results if version == "v7") > 20
