"""The response cache across replicas (a real `redis-server`), with Redis down, and the admin
call that invalidates it; through the real Envoy."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from tests.conftest import API_TOKEN
from tests.e2e.conftest import free_port
from tests.e2e.harness import CASCADE, Gateway, wait_for

SECRET = "0123456789abcdef0123456789abcdef"


def config(workdir: Path, url: str, prefix: str) -> str:
    secret = workdir / "cache-secret"
    secret.write_text(SECRET)
    return f"""
cache:
  backend: redis
  secret_file: "{secret}"
  redis: {{url: "{url}", key_prefix: "{prefix}", timeout_ms: 200}}
  admin_callers: [tests]
"""


def counter(gateway: Gateway, line_start: str) -> float:
    for line in gateway.metrics().splitlines():
        if line.startswith(line_start):
            return float(line.split()[-1])
    return 0.0


def stored(gateway: Gateway) -> float:
    return counter(gateway, 'cascade_cache_stores_total{result="stored"}')


def backend_calls(gateway: Gateway) -> int:
    return sum(len(backend.requests) for backend in gateway.backends.values())


def test_a_new_replica_serves_what_another_stored(tmp_path: Path, redis_url: str) -> None:
    gateway = Gateway(tmp_path, config(tmp_path, redis_url, "warm:"))
    try:
        user = {"x-user-id": "alice"}
        gateway.chat("Which river flows through Vienna?", headers=user, temperature=0)
        wait_for(lambda: stored(gateway) >= 1, 10, "the answer to be stored")
        wait_for(
            lambda: counter(gateway, 'cascade_cache_replicated_total{result="sent"}') >= 1,
            10,
            "the entry to reach Redis",
        )
        gateway.stop_classifier(signal.SIGKILL)  # the replica that stored it is gone
        gateway.start_classifier()  # a new one on the same port: empty memory, warm from Redis
        wait_for(gateway.classifier_healthy, 30, "the new replica to be healthy")
        wait_for(
            lambda: counter(gateway, 'cascade_cache_replicated_total{result="received"}') >= 1,
            10,
            "the new replica to read the stream",
        )
        calls = backend_calls(gateway)
        again = gateway.chat("Which river flows through Vienna?", headers=user, temperature=0)
        assert again.headers["x-cascade-cache"] == "hit"
        assert backend_calls(gateway) == calls
        # the admin call empties this replica and tells the others
        invalidate = [
            str(CASCADE),
            "cache",
            "invalidate",
            "--target",
            f"127.0.0.1:{gateway.classifier_port}",
        ]
        token = tmp_path / "token"
        token.write_text(API_TOKEN)
        done = subprocess.run(
            [*invalidate, "--token-file", str(token)],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        assert "dropped 1 entries" in done.stdout
        after = gateway.chat("Which river flows through Vienna?", headers=user, temperature=0)
        assert after.headers["x-cascade-cache"] == "miss"
        token.write_text("not-a-token")
        refused = subprocess.run(
            [*invalidate, "--token-file", str(token)],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert refused.returncode == 1
        assert "UNAUTHENTICATED" in refused.stderr
    finally:
        gateway.close()


def test_redis_down_degrades_to_local_memory(tmp_path: Path) -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    gateway = Gateway(tmp_path, config(tmp_path, nowhere, "down:"))
    try:
        user = {"x-user-id": "bob"}
        first = gateway.chat("Name three primary colours.", headers=user, temperature=0)
        assert first.status == 200
        assert first.headers["x-cascade-cache"] == "miss"
        wait_for(lambda: stored(gateway) >= 1, 10, "the answer to be stored")
        second = gateway.chat("Name three primary colours.", headers=user, temperature=0)
        assert second.status == 200
        assert second.headers["x-cascade-cache"] == "hit"  # this replica's memory still serves
        wait_for(
            lambda: counter(gateway, 'cascade_cache_replicated_total{result="send_error"}') >= 1,
            10,
            "the failed send to be counted",
        )
    finally:
        gateway.close()
