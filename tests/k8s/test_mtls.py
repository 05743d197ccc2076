"""k8s/overlays/envoy-mtls: Envoy's ext_proc cluster speaks TLS with a client certificate, the
files it names are mounted from the Secret, Envoy accepts the config with real certificates, the
classifier serves TLS from its Secret, and the in-pod probes work against a TLS server."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format

from extproc.gateway.common import EXT_PROC_CLUSTER
from tests.k8s import envoy_mtls, test_classifier_pod
from tests.k8s.conftest import container, find, one
from tests.k8s.kustomize import Obj
from tests.k8s.test_envoy_overlay import ENVOY, envoy_config_map

local_args = test_classifier_pod.local_args
serve = test_classifier_pod.serve  # the fixture: runs `cascade serve` with a Deployment's args
OVERLAY = "envoy-mtls"
SAN = "cascade-classifier.cascade.svc"
requires_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl missing")


def bootstrap(objects: list[Obj]) -> Obj:
    data: Obj = yaml.safe_load(envoy_config_map(objects)["data"]["envoy.yaml"])
    return data


def extproc_cluster(objects: list[Obj]) -> Obj:
    [cluster] = [
        c
        for c in bootstrap(objects)["static_resources"]["clusters"]
        if c["name"] == EXT_PROC_CLUSTER
    ]
    return cluster


def volume_files(deployment: Obj, mount_path: Path) -> tuple[Obj, dict[str, str]]:
    """(the Secret volume mounted at `mount_path`, file name → Secret key)."""
    main = container(deployment)
    [mount] = [m for m in main["volumeMounts"] if m["mountPath"] == str(mount_path)]
    assert mount["readOnly"] is True
    [volume] = [
        v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]
    ]
    return volume, {i["path"]: i["key"] for i in volume["secret"]["items"]}


def test_envoy_config_is_a_fresh_build(rendered: dict[str, list[Obj]]) -> None:
    built = envoy_mtls.build()
    assert envoy_mtls.OUTPUT.read_text() == built, "stale: python -m tests.k8s.envoy_mtls"
    assert envoy_config_map(rendered[OVERLAY])["data"]["envoy.yaml"] == built
    # Everything but the transport socket is the plain overlay's config.
    plain, mtls = bootstrap(rendered["envoy"]), bootstrap(rendered[OVERLAY])
    for cluster in mtls["static_resources"]["clusters"]:
        cluster.pop("transport_socket", None)
    assert mtls == plain
    assert "transport_socket" not in extproc_cluster(rendered["envoy"])


def test_transport_socket_is_mutual_tls(rendered: dict[str, list[Obj]]) -> None:
    from envoy.config.cluster.v3 import cluster_pb2
    from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2

    cluster = cluster_pb2.Cluster()
    json_format.ParseDict(extproc_cluster(rendered[OVERLAY]), cluster)  # unknown fields fail
    assert cluster.transport_socket.name == "envoy.transport_sockets.tls"
    context = tls_pb2.UpstreamTlsContext()
    assert cluster.transport_socket.typed_config.Unpack(context)
    common = context.common_tls_context
    assert context.sni == SAN
    assert list(common.alpn_protocols) == ["h2"]  # gRPC; the classifier offers h2 only
    [certificate] = common.tls_certificates  # Envoy's client certificate
    assert certificate.certificate_chain.filename and certificate.private_key.filename
    validation = common.validation_context
    assert validation.trusted_ca.filename
    [san] = validation.match_typed_subject_alt_names
    assert san.matcher.exact == SAN
    assert common.tls_params.tls_minimum_protocol_version >= common_pb2.TlsParameters.TLSv1_2


def test_envoy_reads_its_certificates_from_the_client_secret(
    rendered: dict[str, list[Obj]],
) -> None:
    envoy = one(rendered[OVERLAY], "Deployment", "cascade-envoy")
    tls = extproc_cluster(rendered[OVERLAY])["transport_socket"]["typed_config"][
        "common_tls_context"
    ]
    files = [
        Path(tls["tls_certificates"][0]["certificate_chain"]["filename"]),
        Path(tls["tls_certificates"][0]["private_key"]["filename"]),
        Path(tls["validation_context"]["trusted_ca"]["filename"]),
    ]
    [directory] = {f.parent for f in files}
    volume, items = volume_files(envoy, directory)
    assert volume["secret"]["secretName"] == "cascade-envoy-client-tls"
    assert items == {"tls.crt": "tls.crt", "tls.key": "tls.key", "ca.crt": "ca.crt"}
    assert {f.name for f in files} == set(items)
    # 0440 and Envoy's uid in the group that owns the files
    pod = envoy["spec"]["template"]["spec"]
    assert volume["secret"]["defaultMode"] == 0o440
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]


def test_classifier_serves_tls_from_its_secret(rendered: dict[str, list[Obj]]) -> None:
    deployment = one(rendered[OVERLAY], "Deployment", "cascade-classifier")
    args = container(deployment)["args"]
    cert, key = Path(args[args.index("--tls-cert") + 1]), Path(args[args.index("--tls-key") + 1])
    assert cert.parent == key.parent
    volume, items = volume_files(deployment, cert.parent)
    assert volume["secret"]["secretName"] == "cascade-classifier-tls"
    assert {cert.name, key.name, "ca.crt"} <= set(items)
    # The plain-Envoy overlays must not diverge elsewhere: same Deployments, same Services.
    names = sorted(o["metadata"]["name"] for o in find(rendered[OVERLAY], "Deployment"))
    assert names == sorted(o["metadata"]["name"] for o in find(rendered["envoy"], "Deployment"))


def test_classifier_requires_client_certificates(rendered: dict[str, list[Obj]]) -> None:
    args = container(one(rendered[OVERLAY], "Deployment", "cascade-classifier"))["args"]
    assert "--tls-client-ca" in args
    ca = Path(args[args.index("--tls-client-ca") + 1])
    assert ca.name == "ca.crt"
    assert ca.parent == Path(args[args.index("--tls-cert") + 1]).parent


# -- with real certificates ----------------------------------------------------------------------


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_pki(directory: Path) -> dict[str, Path]:
    """A CA, a classifier certificate (server + client auth) and an Envoy client certificate."""
    directory.mkdir()
    ca_key, ca = directory / "ca.key", directory / "ca.crt"
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-keyout", str(ca_key), "-out", str(ca), "-subj", "/CN=cascade-test-ca")  # fmt: skip
    paths = {"ca": ca}
    for name, usage, san in (
        ("classifier", "serverAuth,clientAuth", f"DNS:{SAN}"),
        ("envoy", "clientAuth", "DNS:cascade-envoy.cascade.svc"),
    ):
        key, csr, cert = (
            directory / f"{name}.key",
            directory / f"{name}.csr",
            directory / f"{name}.crt",
        )
        ext = directory / f"{name}.ext"
        ext.write_text(f"subjectAltName={san}\nextendedKeyUsage={usage}\n")
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}")  # fmt: skip
        openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-days", "1", "-out", str(cert), "-extfile", str(ext))  # fmt: skip
        paths[f"{name}.crt"], paths[f"{name}.key"] = cert, key
    return paths


@requires_openssl
@pytest.mark.skipif(not ENVOY.exists() and shutil.which("envoy") is None, reason="no envoy binary")
def test_envoy_accepts_the_mtls_config_with_real_certificates(
    rendered: dict[str, list[Obj]], tmp_path: Path
) -> None:
    pki = make_pki(tmp_path / "pki")
    objects = rendered[OVERLAY]
    text = envoy_config_map(objects)["data"]["envoy.yaml"]
    tls_dir = "/etc/envoy-tls/"
    assert tls_dir + "tls.crt" in text
    text = text.replace(tls_dir + "tls.crt", str(pki["envoy.crt"]))
    text = text.replace(tls_dir + "tls.key", str(pki["envoy.key"]))
    text = text.replace(tls_dir + "ca.crt", str(pki["ca"]))
    config = tmp_path / "envoy.yaml"
    config.write_text(text)
    args = list(container(one(objects, "Deployment", "cascade-envoy"))["args"])
    args[args.index("--config-path") + 1] = str(config)
    binary = str(ENVOY) if ENVOY.exists() else "envoy"
    result = subprocess.run(
        [binary, "--mode", "validate", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    # Control: a missing client key is refused, so validation does read the files.
    config.write_text(text.replace(str(pki["envoy.key"]), str(tmp_path / "missing.key")))
    result = subprocess.run(
        [binary, "--mode", "validate", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0


@requires_openssl
def test_probes_present_the_pod_certificate_and_pass(
    rendered: dict[str, list[Obj]], serve: object, tmp_path: Path
) -> None:
    pki = make_pki(tmp_path / "pki")
    deployment = one(rendered[OVERLAY], "Deployment", "cascade-classifier")
    main = container(deployment)
    args = main["args"]
    tls_dir = Path(args[args.index("--tls-cert") + 1]).parent
    config = one(rendered[OVERLAY], "ConfigMap", "cascade-config")["data"]["cascade.yaml"]
    tls_args = local_args(
        args,
        {
            "--tls-cert": str(pki["classifier.crt"]),
            "--tls-key": str(pki["classifier.key"]),
            "--tls-client-ca": str(pki["ca"]),
        },
    )
    _process, port, _ = serve(tls_args, config)  # type: ignore[operator]
    listen_port = args[args.index("--listen") + 1].rpartition(":")[2]
    local = tmp_path / "pod-tls"
    local.mkdir()
    shutil.copy(pki["classifier.crt"], local / "tls.crt")
    shutil.copy(pki["classifier.key"], local / "tls.key")
    shutil.copy(pki["ca"], local / "ca.crt")

    def run(command: list[str]) -> subprocess.CompletedProcess[bytes]:
        assert command[:2] == ["python", "-c"]
        script = command[2].replace(f"127.0.0.1:{listen_port}", f"127.0.0.1:{port}")
        assert f'"{tls_dir}/"' in script
        script = script.replace(f'"{tls_dir}/"', repr(f"{local}/"))
        return subprocess.run(
            [sys.executable, "-c", script, *command[3:]],
            capture_output=True,
            timeout=30,
            check=False,
        )

    for probe in (main["readinessProbe"], main["livenessProbe"]):
        result = run(probe["exec"]["command"])
        assert result.returncode == 0, result.stderr.decode()[-2000:]
    # Control: against a CA that did not sign the server certificate the probe fails.
    other = make_pki(tmp_path / "other")
    shutil.copy(other["ca"], local / "ca.crt")
    assert run(main["readinessProbe"]["exec"]["command"]).returncode != 0
    name = re.search(
        r'"grpc.ssl_target_name_override", "([^"]+)"', main["readinessProbe"]["exec"]["command"][2]
    )
    assert name is not None and name.group(1) == SAN


def test_documented_certificates_fit_the_overlay(rendered: dict[str, list[Obj]]) -> None:
    """docs/kubernetes.md's cert-manager Certificates make the Secrets the overlay mounts, with
    the names Envoy verifies and the usages each side needs."""
    from tests.k8s.test_docs import block_with

    certificates = {
        c["spec"]["secretName"]: c["spec"]
        for c in yaml.safe_load_all(block_with("kind: Certificate"))
    }
    objects = rendered[OVERLAY]
    mounted = {
        v["secret"]["secretName"]
        for d in find(objects, "Deployment")
        for v in d["spec"]["template"]["spec"]["volumes"]
        if "secret" in v
    }
    assert set(certificates) == mounted == {"cascade-classifier-tls", "cascade-envoy-client-tls"}
    server = certificates["cascade-classifier-tls"]
    assert SAN in server["dnsNames"]
    assert {"server auth", "client auth"} <= set(server["usages"])
    assert "client auth" in certificates["cascade-envoy-client-tls"]["usages"]
    assert len({c["issuerRef"]["name"] for c in certificates.values()}) == 1  # one CA
