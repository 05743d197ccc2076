"""The classifier Deployment agrees with the image and the CLI: its arguments parse, its probes
ask the health services the server really serves, the drain fits the termination grace period,
the config it mounts compiles, and the Dockerfile builds the package it runs."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from extproc.app.run import EXT_PROC_SERVICE
from extproc.cli.main import build_parser
from extproc.config.snapshot import DEFAULT_CONFIG, compile_config
from tests.conftest import ROOT
from tests.k8s.conftest import ROUTING_OVERLAYS, container, find, one
from tests.k8s.kustomize import Obj, split_image

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def classifier(objects: list[Obj]) -> Obj:
    return one(objects, "Deployment", "cascade-classifier")


def option(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


@pytest.fixture(params=ROUTING_OVERLAYS)
def overlay(request: pytest.FixtureRequest, rendered: dict[str, list[Obj]]) -> list[Obj]:
    return rendered[request.param]


# -- Dockerfile ------------------------------------------------------------------------------------


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """Instructions per stage as (INSTRUCTION, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: list[list[tuple[str, str]]] = [[]]
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        stages[-1].append((instruction.upper(), rest.strip()))
    return stages


def final_stage(instruction: str) -> list[str]:
    return [rest for name, rest in dockerfile_stages()[-1] if name == instruction]


def test_image_is_slim_non_root_with_cascade_entrypoint(rendered: dict[str, list[Obj]]) -> None:
    args = dict(rest.split("=", 1) for name, rest in dockerfile_stages()[0] if name == "ARG")
    base = args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.(\d+)-slim(-\w+)?", base)
    minor = int(base.split(".")[1].split("-")[0])
    assert PROJECT["requires-python"] == ">=3.11" and minor >= 11
    # the default (last) stage is the server: a fresh base with only the server's environment
    assert final_stage("FROM") == ["${PYTHON_IMAGE} AS server"]
    assert final_stage("COPY") == ["--from=build /opt/cascade /opt/cascade"]
    [user] = final_stage("USER")
    uid, gid = (int(part) for part in user.split(":"))
    assert uid != 0 and gid != 0
    assert yaml.safe_load(final_stage("ENTRYPOINT")[0]) == ["cascade"]
    [cmd] = final_stage("CMD")
    build_parser().parse_args(yaml.safe_load(cmd))
    exposed = {int(port) for line in final_stage("EXPOSE") for port in line.split()}
    deployment = classifier(rendered["base"])
    pod = deployment["spec"]["template"]["spec"]
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (uid, gid)
    assert exposed == {p["containerPort"] for p in container(deployment)["ports"]}


def test_deployment_runs_this_version_of_the_image(overlay: list[Obj]) -> None:
    deployment = classifier(overlay)
    name, tag = split_image(container(deployment)["image"])
    assert (name, tag) == ("cascade-router", ":" + PROJECT["version"])
    assert "command" not in container(deployment)  # the image's ENTRYPOINT (cascade) runs


def dockerignore_included(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""

    def regex(pattern: str) -> re.Pattern[str]:
        out = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        return re.compile(out + "$")

    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    included = True
    for pattern in patterns:
        negate = pattern.startswith("!")
        compiled = regex(pattern.lstrip("!").strip("/"))
        if any(compiled.match(candidate) for candidate in candidates):
            included = negate
    return included


def build_context(destination: Path) -> list[str]:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    context = sorted(path for path in tracked if dockerignore_included(path, patterns))
    for path in context:
        target = destination / path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / path, target)
    return context


def test_dockerignore_semantics() -> None:
    patterns = ["*", "!extproc", "**/__pycache__"]
    assert dockerignore_included("extproc/cli/main.py", patterns)
    assert dockerignore_included("extproc/defaults/cascade.yaml", patterns)
    assert not dockerignore_included("extproc/__pycache__/cli.pyc", patterns)
    assert not dockerignore_included("tests/k8s/test_render.py", patterns)
    assert not dockerignore_included("Makefile", patterns)


def test_build_context_builds_the_package(tmp_path: Path) -> None:
    """What `docker build` would see is enough to build the wheel the image installs."""
    context = build_context(tmp_path / "context")
    assert not [path for path in context if path.startswith(("tests/", "k8s/", ".git"))]
    for name, rest in [step for stage in dockerfile_stages() for step in stage]:
        if name == "COPY" and not rest.startswith("--from"):
            *sources, _ = rest.split()
            for source in sources:
                assert (tmp_path / "context" / source).exists(), source
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "--wheel-dir",
            str(tmp_path / "wheels"),
            str(tmp_path / "context"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    [wheel] = (tmp_path / "wheels").glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        scripts = archive.read(entry_points).decode()
    assert "extproc/defaults/cascade.yaml" in names
    assert "extproc/cli/serve.py" in names
    assert re.search(r"^cascade = extproc\.cli\.main:main$", scripts, re.M)
    # the server wheel carries neither the demo nor the mock backends (they are `cascade-dev`)
    assert not [n for n in names if n.startswith("cascade_dev/") or "mock" in n or "demo" in n]
    assert "cascade.commands" not in scripts


# -- the Deployment and the CLI -----------------------------------------------------------------


def test_arguments_parse_with_the_cli(overlay: list[Obj], rendered: dict[str, list[Obj]]) -> None:
    parser = build_parser()
    args = container(classifier(overlay))["args"]
    parsed = parser.parse_args(args)  # an unknown flag or bad value exits here
    assert parsed.command == "serve"
    assert parsed.log_format == "json"
    for mock in find(rendered["mock-backends"], "Deployment"):
        mock_args = parser.parse_args(container(mock)["args"])
        assert mock_args.command == "mock-backend"
        port = container(mock)["ports"][0]["containerPort"]
        assert int(option(container(mock)["args"], "--port")) == port


def test_config_is_mounted_as_a_directory_and_compiles(overlay: list[Obj]) -> None:
    deployment = classifier(overlay)
    args = container(deployment)["args"]
    config_path = Path(option(args, "--config"))
    [mount] = [
        m
        for m in container(deployment)["volumeMounts"]
        if m["mountPath"] == str(config_path.parent)
    ]
    assert "subPath" not in mount  # a subPath mount never sees ConfigMap updates
    volume = next(
        v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]
    )
    config_map = one(overlay, "ConfigMap", volume["configMap"]["name"])
    items = {item["path"]: item["key"] for item in volume["configMap"].get("items", [])}
    key = items.get(config_path.name, config_path.name)
    snapshot = compile_config(config_map["data"][key], key)
    # The stable classifier is the packaged v7, rule for rule.
    packaged = compile_config(DEFAULT_CONFIG.read_bytes(), "default")
    assert snapshot.stable == packaged.stable == "v7"
    assert snapshot.raw["classifiers"]["v7"]["rules"] == packaged.raw["classifiers"]["v7"]["rules"]
    assert snapshot.tier_names == packaged.tier_names


def test_ports_probes_and_drain_agree(overlay: list[Obj]) -> None:
    deployment = classifier(overlay)
    main = container(deployment)
    args = main["args"]
    listen_port = int(option(args, "--listen").rpartition(":")[2])
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert ports["grpc"] == listen_port
    assert option(args, "--listen").startswith("0.0.0.0:")
    drain = float(option(args, "--drain-delay"))
    grace = float(option(args, "--grace"))
    pod = deployment["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= drain + grace + 2
    readiness, liveness = main["readinessProbe"], main["livenessProbe"]
    if "grpc" in readiness:
        assert readiness["grpc"] == {"port": listen_port, "service": EXT_PROC_SERVICE}
        assert liveness["grpc"] == {"port": listen_port, "service": ""}
    else:  # TLS: the same health checks from inside the pod
        assert readiness["exec"]["command"][-1] == EXT_PROC_SERVICE
        assert liveness["exec"]["command"][-1] == ""
    # Readiness turns NOT_SERVING into "not ready" within the drain delay...
    assert readiness["periodSeconds"] * readiness["failureThreshold"] < drain
    # ... and liveness never kills a pod that is draining.
    assert liveness["periodSeconds"] * liveness["failureThreshold"] > drain + grace


def test_pod_hardening_and_sizing(overlay: list[Obj]) -> None:
    deployment = classifier(overlay)
    pod = deployment["spec"]["template"]["spec"]
    main = container(deployment)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    assert main["securityContext"]["readOnlyRootFilesystem"] is True
    assert main["securityContext"]["allowPrivilegeEscalation"] is False
    assert main["securityContext"]["capabilities"]["drop"] == ["ALL"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(main["resources"][kind])
    assert deployment["spec"]["replicas"] >= 2
    hpa = one(overlay, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "cascade-classifier",
    }
    assert hpa["spec"]["minReplicas"] >= 2


def test_selectors_match_pod_labels(overlay: list[Obj]) -> None:
    for deployment in find(overlay, "Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        for spread in deployment["spec"]["template"]["spec"].get("topologySpreadConstraints", []):
            assert spread["labelSelector"]["matchLabels"].items() <= labels.items()
    pods = [d["spec"]["template"]["metadata"]["labels"] for d in find(overlay, "Deployment")]
    for service in find(overlay, "Service"):
        selector = service["spec"]["selector"]
        assert sum(selector.items() <= labels.items() for labels in pods) == 1, service
        for port in service["spec"]["ports"]:
            target = port["targetPort"]
            deployment = next(
                d
                for d in find(overlay, "Deployment")
                if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
            )
            names = {
                p["name"]
                for c in deployment["spec"]["template"]["spec"]["containers"]
                for p in c["ports"]
            }
            assert target in names, (service["metadata"]["name"], target)
    for budget in find(overlay, "PodDisruptionBudget"):
        selector = budget["spec"]["selector"]["matchLabels"]
        assert sum(selector.items() <= labels.items() for labels in pods) == 1


# -- the server started with the Deployment's arguments ----------------------------------------------


def wait_for(path: Path, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return path.read_text()
        time.sleep(0.05)
    raise TimeoutError(path)


def local_args(args: list[str], replacements: dict[str, str]) -> list[str]:
    out = list(args)
    for flag, value in replacements.items():
        if flag in out:
            out[out.index(flag) + 1] = value
        else:
            out += [flag, value]
    return out


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[object]:
    processes: list[subprocess.Popen[bytes]] = []

    def start(args: list[str], config_text: str) -> tuple[subprocess.Popen[bytes], int, Path]:
        config = tmp_path / "cascade.yaml"
        config.write_text(config_text)
        port_file, metrics_file = tmp_path / "port", tmp_path / "metrics-port"
        for path in (port_file, metrics_file):
            path.unlink(missing_ok=True)
        command = local_args(
            args,
            {
                "--config": str(config),
                "--listen": "127.0.0.1:0",
                "--metrics-listen": "127.0.0.1:0",
                "--drain-delay": "1",
                "--grace": "2",
            },
        )
        with (tmp_path / "stderr").open("wb") as stderr:
            process = subprocess.Popen(
                [str(Path(sys.executable).with_name("cascade")), *command],
                stderr=stderr,
                env={
                    **os.environ,
                    "CASCADE_PORT_FILE": str(port_file),
                    "CASCADE_METRICS_PORT_FILE": str(metrics_file),
                },
            )
        processes.append(process)
        return process, int(wait_for(port_file)), metrics_file

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


def health(channel: grpc.Channel, service: str) -> int:
    request = health_pb2.HealthCheckRequest(service=service)
    reply = health_pb2_grpc.HealthStub(channel).Check(request, timeout=5)
    return int(reply.status)


def test_server_serves_the_probed_health_services_and_drains(
    rendered: dict[str, list[Obj]], serve: object
) -> None:
    deployment = classifier(rendered["kgateway"])
    main = container(deployment)
    config = one(rendered["kgateway"], "ConfigMap", "cascade-config")["data"]["cascade.yaml"]
    process, port, metrics_file = serve(main["args"], config)  # type: ignore[operator]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        for probe in (main["readinessProbe"], main["livenessProbe"]):
            assert (
                health(channel, probe["grpc"]["service"]) == health_pb2.HealthCheckResponse.SERVING
            )
        metrics_port = int(wait_for(metrics_file))
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as reply:
            assert reply.status == 200
            assert "cascade_" in reply.read().decode()
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        readiness = main["readinessProbe"]["grpc"]["service"]
        assert health(channel, readiness) == health_pb2.HealthCheckResponse.NOT_SERVING
    assert process.wait(timeout=15) == 0
    assert (
        time.monotonic() - started
        < deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    )


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl missing")
def test_tls_probe_commands_work_against_the_tls_server(
    rendered: dict[str, list[Obj]], serve: object, tmp_path: Path
) -> None:
    deployment = classifier(rendered["kgateway-tls"])
    main = container(deployment)
    args = main["args"]
    mounts = {m["name"]: m["mountPath"] for m in main["volumeMounts"]}
    tls_dir = Path(mounts["tls"])
    assert Path(option(args, "--tls-cert")).parent == tls_dir
    assert Path(option(args, "--tls-key")).parent == tls_dir
    secret = next(
        v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "tls"
    )
    keys = {item["path"] for item in secret["secret"]["items"]}
    assert {
        Path(option(args, "--tls-cert")).name,
        Path(option(args, "--tls-key")).name,
        "ca.crt",
    } <= keys
    readiness = main["readinessProbe"]["exec"]["command"]
    name = re.search(r'"grpc.ssl_target_name_override", "([^"]+)"', readiness[2]).group(1)  # type: ignore[union-attr]
    local = tmp_path / "tls"
    local.mkdir()
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(local / "tls.key"), "-out", str(local / "tls.crt"),
            "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    shutil.copy(local / "tls.crt", local / "ca.crt")
    config = one(rendered["kgateway-tls"], "ConfigMap", "cascade-config")["data"]["cascade.yaml"]
    tls_args = local_args(
        args,
        {"--tls-cert": str(local / "tls.crt"), "--tls-key": str(local / "tls.key")},
    )
    process, port, _ = serve(tls_args, config)  # type: ignore[operator]
    listen_port = option(args, "--listen").rpartition(":")[2]

    def run(command: list[str]) -> int:
        assert command[0] == "python"
        script = command[2].replace(f"127.0.0.1:{listen_port}", f"127.0.0.1:{port}")
        script = script.replace(str(tls_dir / "ca.crt"), str(local / "ca.crt"))
        return subprocess.run(
            [sys.executable, "-c", script, *command[3:]],
            capture_output=True,
            timeout=30,
            check=False,
        ).returncode

    assert run(readiness) == 0
    assert run(main["livenessProbe"]["exec"]["command"]) == 0
    process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    assert run(readiness) == 1
    assert process.wait(timeout=15) == 0
