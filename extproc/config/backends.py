"""A tier backend's target: `host:port`, or a URL with TLS, a base path and a credential.

`address` is either `host:port` (plain HTTP, the request unchanged) or a URL:

- `http://10.0.0.5:8000` is the same as `10.0.0.5:8000`;
- `https://api.provider.example/v1` means TLS (SNI and certificate check against the URL's
  host, the system CA bundle unless `tls.ca_file` is given), `Host: api.provider.example`, and
  the base path `/v1`: a request path `/v1/<rest>` becomes `<base path>/<rest>`
  (`/v1/chat/completions` → `/v1/chat/completions` here, `/openai/v1/chat/completions` for
  `https://api.groq.com/openai/v1`). Paths not under `/v1/` pass unchanged. A URL without a
  path (or `/`) leaves every path unchanged.

`credential` names where Envoy reads the header value sent to this backend (a file, e.g. a
mounted Kubernetes Secret, or an environment variable): the rendered config holds the file
name or the variable's name, never the key. It replaces what the client sent in that header,
and the client's other credential headers are removed (extproc/gateway/providers.py), so a
client's key never reaches a provider that has its own. The value is the header's whole value, e.g.
`Bearer sk-...` for `authorization` (Envoy's generic credential injector sends it as is).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from extproc.config.check import Checker, join_path
from extproc.core.hostport import HostPort, join_host_port

#: The path prefix a URL backend's base path replaces (OpenAI-style APIs live under it).
API_PREFIX = "/v1"

BACKEND_KEYS = {"address", "model", "weight", "name", "tls", "credential"}
_TLS_KEYS = {"ca_file", "sni", "cert_file", "key_file"}
_CREDENTIAL_KEYS = {"file", "env", "header"}
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class BackendTls:
    """TLS toward a backend: SNI and the certificate name checked, CA, optional client cert."""

    #: sent as SNI; the server certificate must name it (DNS or IP subject alt name)
    sni: str
    #: PEM bundle of trusted CAs; "" = `envoy.ca_bundle` (the system's)
    ca_file: str = ""
    #: client certificate and key (PEM files) when the backend asks for one (mTLS)
    cert_file: str = ""
    key_file: str = ""


@dataclass(frozen=True, slots=True)
class Credential:
    """Where Envoy reads the header value it sends to the backend (exactly one of file, env)."""

    #: the header it sets, lowercased (`authorization`, `x-api-key`, `api-key`)
    header: str = "authorization"
    file: str = ""
    env: str = ""


@dataclass(frozen=True, slots=True)
class Target:
    host: str
    port: int
    tls: BackendTls | None = None
    #: the base path replacing `/v1`; "" = paths unchanged
    path: str = ""
    #: the Host header toward the backend; "" = the client's (plain `host:port` backends)
    host_header: str = ""
    credential: Credential | None = None


def compile_target(check: Checker, spec: dict[str, Any], path: str) -> Target:
    """The target of one backend mapping (`address` plus `tls` and `credential`)."""
    address_path = join_path(path, "address")
    address = check.string(spec["address"], address_path)
    credential = _compile_credential(check, spec.get("credential"), join_path(path, "credential"))
    if "://" not in address:
        host, port = check.host_port(address, address_path)
        if "tls" in spec:
            raise check.fail(join_path(path, "tls"), "TLS needs an https:// address")
        return Target(host=host, port=port, credential=credential)
    scheme, hostport, base = _split_url(check, address, address_path)
    tls = None
    if scheme == "https":
        tls = _compile_tls(check, spec.get("tls"), join_path(path, "tls"), hostport.host)
    elif "tls" in spec:
        raise check.fail(join_path(path, "tls"), "TLS needs an https:// address")
    default_port = hostport.port == _DEFAULT_PORTS[scheme]
    authority = hostport.host if default_port else join_host_port(hostport.host, hostport.port)
    if ":" in authority and default_port:
        authority = f"[{authority}]"
    if tls is None and not base and credential is None:
        return Target(host=hostport.host, port=hostport.port)
    return Target(
        host=hostport.host,
        port=hostport.port,
        tls=tls,
        path=base,
        host_header=authority,
        credential=credential,
    )


def _split_url(check: Checker, address: str, path: str) -> tuple[str, HostPort, str]:
    try:
        parts = urlsplit(address)
        port = parts.port
    except ValueError as exc:
        raise check.fail(path, f"not a valid URL: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise check.fail(path, f"expected an http:// or https:// URL, got {address!r}")
    if parts.username or parts.password:
        raise check.fail(path, "no credentials in the URL; use `credential` (a file or env)")
    if parts.query or parts.fragment:
        raise check.fail(path, "a backend URL takes no query or fragment")
    if port == 0:
        raise check.fail(path, f"port 0 in {address!r}")
    host = parts.hostname or ""
    if not host:
        raise check.fail(path, f"no host in {address!r}")
    if any(c.isspace() for c in address):
        raise check.fail(path, "a backend URL has no spaces")
    base = parts.path.rstrip("/")
    return scheme, HostPort(host, port or _DEFAULT_PORTS[scheme]), base


def _compile_tls(check: Checker, value: object, path: str, host: str) -> BackendTls:
    spec = {} if value is None else check.mapping(value, path, _TLS_KEYS)
    files = {
        key: check.string(spec[key], join_path(path, key))
        for key in ("ca_file", "cert_file", "key_file")
        if key in spec
    }
    if ("cert_file" in files) != ("key_file" in files):
        raise check.fail(path, "cert_file and key_file go together (a client certificate)")
    sni = check.string(spec.get("sni", host), join_path(path, "sni"))
    return BackendTls(sni=sni, **files)


def _compile_credential(check: Checker, value: object, path: str) -> Credential | None:
    if value is None:
        return None
    spec = check.mapping(value, path, _CREDENTIAL_KEYS)
    sources = [key for key in ("file", "env") if key in spec]
    if len(sources) != 1:
        raise check.fail(path, "give exactly one of file (a path) or env (a variable name)")
    source = sources[0]
    text = check.string(spec[source], join_path(path, source))
    if source == "env" and not (text.replace("_", "").isalnum() and text.isascii()):
        raise check.fail(join_path(path, "env"), "expected an environment variable name")
    header = check.string(spec.get("header", "authorization"), join_path(path, "header"))
    header = header.strip().lower()
    if not header.replace("-", "").isalnum() or not header.isascii() or header.startswith(":"):
        raise check.fail(join_path(path, "header"), "expected a header name")
    if header.startswith("x-cascade-") or header in ("host", "content-length"):
        raise check.fail(join_path(path, "header"), f"{header!r} cannot carry a credential")
    return Credential(header=header, **{source: text})
