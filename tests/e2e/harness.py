"""Real Envoy + `cascade serve` + mock backends on 127.0.0.1, ports chosen at run time."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import yaml
from cascade_dev.mock_backend import MockBackend

from extproc.config.snapshot import DEFAULT_CONFIG, compile_config
from extproc.gateway.process import admin_port, envoy_command
from extproc.gateway.render import render_yaml
from tests.conftest import write_api_tokens

BIN = Path(sys.executable).parent
ENVOY = BIN / "envoy"
CASCADE = BIN / "cascade"
T = TypeVar("T")


class BackgroundLoop:
    """An asyncio loop in a daemon thread, for async fixtures used by synchronous tests."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@dataclasses.dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


class Gateway:
    """One running stack. `request()` goes through Envoy's listener."""

    def __init__(
        self,
        workdir: Path,
        config_overrides: str = "",
        stream_delay_ms: int = 150,
        *,
        extra_backends: dict[str, str] | None = None,
        edit_config: Callable[[dict[str, Any], Gateway], None] | None = None,
        before_envoy: Callable[[Gateway], dict[str, Any]] | None = None,
        classifier_env: dict[str, str] | None = None,
        edit_envoy: Callable[[dict[str, Any]], None] | None = None,
        strict_models: bool = False,
        serve_args: tuple[str, ...] = (),
        backend_options: dict[str, Any] | None = None,
    ) -> None:
        """`extra_backends`: more mock backends, name -> model (in `backends`);
        `edit_config(document, gateway)`: change the cascade config after the overrides;
        `before_envoy(gateway)`: runs once the classifier is up, returns `envoy:` overrides;
        `edit_envoy(document)`: change the rendered Envoy bootstrap (tests only);
        `strict_models`: backends answer 404 to a model they do not serve (vLLM-like);
        `serve_args`: more `cascade serve` options (e.g. `--transport grpcio`);
        `backend_options`: more `MockBackend` options for every backend (e.g. `stream_chunks`)."""
        self.workdir = workdir
        self.loop = BackgroundLoop()
        mock = functools.partial(
            MockBackend,
            stream_delay_ms=stream_delay_ms,
            strict_models=strict_models,
            **(backend_options or {}),
        )
        self.backends = {"weak": mock("weak", ["qwen3-4b"]), "strong": mock("strong", ["glm-5"])}
        for name, model in (extra_backends or {}).items():
            self.backends[name] = mock(name, [model])
        self._edit_config = edit_config
        self.serve_args = serve_args
        self._edit_envoy = edit_envoy
        #: extra environment of `cascade serve` (e.g. OTEL_* variables)
        self.classifier_env: dict[str, str] = dict(classifier_env or {})
        self.processes: list[subprocess.Popen[bytes]] = []
        for backend in self.backends.values():
            self.loop.run(backend.start())
        self.config_path = workdir / "cascade.yaml"
        self.config_path.write_text(self._cascade_config(config_overrides))
        self.classifier: subprocess.Popen[bytes] | None = None
        self.classifier_port = 0
        self.start_classifier()
        self.envoy: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.admin_port = 0
        self._start_envoy(before_envoy(self) if before_envoy else {})

    # -- configuration -------------------------------------------------------------------------

    def _cascade_config(self, overrides: str) -> str:
        document = yaml.safe_load(DEFAULT_CONFIG.read_text())
        weak, strong = document["tiers"]
        weak["backends"] = [{"address": f"127.0.0.1:{self.backends['weak'].port}"}]
        strong["backends"] = [{"address": f"127.0.0.1:{self.backends['strong'].port}"}]
        document["server"]["rewrite_model"] = True
        if overrides:
            for key, value in yaml.safe_load(overrides).items():
                if isinstance(value, dict) and isinstance(document.get(key), dict):
                    document[key].update(value)
                else:
                    document[key] = value
        if self._edit_config is not None:
            self._edit_config(document, self)
        return yaml.safe_dump(document, allow_unicode=True, sort_keys=False)

    # -- processes -----------------------------------------------------------------------------

    def start_classifier(self) -> None:
        self.classifier, self.classifier_port = self.spawn_classifier(
            self.config_path, "classifier", self.classifier_port
        )

    def spawn_classifier(
        self, config: Path, name: str, port: int = 0
    ) -> tuple[subprocess.Popen[bytes], int]:
        """Another `cascade serve` (logs in `<name>.log`, killed by `close`)."""
        port_file = self.workdir / f"{name}.port"
        port_file.unlink(missing_ok=True)
        listen = f"127.0.0.1:{port}"
        with (self.workdir / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                [
                    str(CASCADE),
                    "serve",
                    "--config",
                    str(config),
                    "--listen",
                    listen,
                    "--drain-delay",
                    "2.5",
                    "--grace",
                    "5",
                    "--api-tokens",
                    str(write_api_tokens(self.workdir)),
                    *_free_metrics_port(),
                    *self.serve_args,
                ],
                stdout=log,
                stderr=log,
                env={
                    **os.environ,
                    "CASCADE_PORT_FILE": str(port_file),
                    "CASCADE_METRICS_PORT_FILE": str(self.workdir / f"{name}.metrics-port"),
                    **self.classifier_env,
                },
            )
        self.processes.append(process)
        wait_for(port_file.exists, 20, "cascade serve to bind")
        return process, int(port_file.read_text())

    def metrics(self, name: str = "classifier") -> str:
        """The Prometheus text of a `cascade serve` started by `spawn_classifier`."""
        port = int((self.workdir / f"{name}.metrics-port").read_text())
        return http_request(port, "GET", "/metrics").body.decode()

    def stop_classifier(self, sig: int = signal.SIGKILL) -> int:
        assert self.classifier is not None
        self.classifier.send_signal(sig)
        code = self.classifier.wait(30)
        self.classifier = None
        return code

    def _start_envoy(self, overrides: dict[str, Any]) -> None:
        snapshot = compile_config(self.config_path.read_text(), str(self.config_path))
        snapshot = dataclasses.replace(
            snapshot,
            envoy=dataclasses.replace(
                snapshot.envoy,
                listen="127.0.0.1:0",
                admin="127.0.0.1:0",
                ext_proc=(f"127.0.0.1:{self.classifier_port}",),
                **overrides,
            ),
        )
        envoy_config = self.workdir / "envoy.yaml"
        rendered = render_yaml(snapshot)
        if self._edit_envoy is not None:
            document = yaml.safe_load(rendered)
            self._edit_envoy(document)
            rendered = yaml.safe_dump(document, sort_keys=False)
        envoy_config.write_text(rendered)
        admin_file = self.workdir / "admin.address"
        with (self.workdir / "envoy.log").open("ab") as log:
            self.envoy = subprocess.Popen(
                envoy_command(envoy_config, admin_file, "warning"),
                stdout=log,
                stderr=log,
            )
        wait_for(lambda: admin_port(admin_file) is not None, 30, "envoy admin")
        self.admin_port = admin_port(admin_file) or 0
        wait_for(lambda: self.admin("/ready").body.strip() == b"LIVE", 30, "envoy LIVE")
        listeners = self.admin("/listeners?format=json").json()
        address = listeners["listener_statuses"][0]["local_address"]["socket_address"]
        self.port = int(address["port_value"])
        wait_for(self.classifier_healthy, 30, "ext_proc cluster healthy")

    def classifier_healthy(self) -> bool:
        text = self.admin("/clusters").body.decode()
        return any(
            line.startswith("cascade_extproc::") and line.endswith("health_flags::healthy")
            for line in text.splitlines()
        )

    def close(self) -> None:
        for proc in (self.envoy, self.classifier, *self.processes):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
        for backend in self.backends.values():
            with contextlib.suppress(Exception):
                self.loop.run(backend.stop())
        self.loop.close()

    def logs(self) -> str:
        parts = []
        for name in ("envoy.log", "classifier.log"):
            path = self.workdir / name
            if path.exists():
                parts.append(f"--- {name} ---\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)

    # -- HTTP ----------------------------------------------------------------------------------

    def admin(self, path: str) -> Response:
        return http_request(self.admin_port, "GET", path)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30,
    ) -> Response:
        return http_request(self.port, method, path, body, headers, timeout)

    def chat(self, text: str, headers: dict[str, str] | None = None, **extra: Any) -> Response:
        body = json.dumps(
            {"model": "auto", "messages": [{"role": "user", "content": text}], **extra}
        ).encode()
        return self.request(
            "POST",
            "/v1/chat/completions",
            body,
            {"content-type": "application/json", **(headers or {})},
        )


def _free_metrics_port() -> list[str]:
    """Several servers run at once: give each a free metrics port (when serve has one)."""
    from extproc.cli.main import build_parser

    for action in build_parser()._actions:
        serve = action.choices.get("serve") if isinstance(action.choices, dict) else None
        if serve is not None and "--metrics-listen" in serve._option_string_actions:
            return ["--metrics-listen", "127.0.0.1:0"]
    return []


def http_request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30,
) -> Response:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        reply = conn.getresponse()
        return Response(reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read())
    finally:
        conn.close()


def stream_events(port: int, body: bytes, timeout: float = 30) -> Iterator[tuple[float, bytes]]:
    """POST a streaming chat request; yield (seconds since start, chunk) as they arrive."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    started = time.monotonic()
    try:
        conn.request(
            "POST", "/v1/chat/completions", body=body, headers={"content-type": "application/json"}
        )
        reply = conn.getresponse()
        assert reply.status == 200, reply.read()
        while True:
            chunk = reply.read1(65536)
            if not chunk:
                return
            yield time.monotonic() - started, chunk
    finally:
        conn.close()


def serving(gateway: Gateway) -> Iterator[Gateway]:
    """A module fixture's body: `yield from serving(Gateway(...))` gives the gateway to the
    module's tests and closes it after the last one. (pytest does not throw a test's failure
    into its fixtures; the gateway's logs reach a failing test's report through
    `conftest.pytest_runtest_makereport`.)"""
    try:
        yield gateway
    finally:
        gateway.close()


def reset_backends(gateway: Gateway) -> None:
    """Forget what every mock backend was asked and told to do (between tests of one stack)."""
    for backend in gateway.backends.values():
        backend.reset()
