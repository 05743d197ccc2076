"""`cascade serve`: the ext_proc gRPC server."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from extproc.app.logs import FORMATS, configure_logging
from extproc.cli.config import add_config_argument, default_config_path


def register(sub: Any) -> None:
    parser = sub.add_parser("serve", help="Run the ext_proc gRPC server (plus gRPC health).")
    add_config_argument(parser)
    parser.add_argument("--listen", default="127.0.0.1:50051", help="gRPC address to listen on.")
    parser.add_argument(
        "--drain-delay",
        type=float,
        default=2.0,
        help="Seconds to report NOT_SERVING after SIGTERM before refusing new streams.",
    )
    parser.add_argument(
        "--grace", type=float, default=10.0, help="Seconds to let open streams finish."
    )
    parser.add_argument(
        "--reload-interval", type=float, default=1.0, help="Config file poll interval, seconds."
    )
    parser.add_argument(
        "--metrics-listen",
        default=os.environ.get("CASCADE_METRICS_LISTEN", "127.0.0.1:9464"),
        help="Prometheus /metrics address, port 0 = any free port, 'off' = none "
        "(default: $CASCADE_METRICS_LISTEN, else 127.0.0.1:9464; containers use 0.0.0.0:9464).",
    )
    parser.add_argument(
        "--transport",
        default="h2",
        choices=["h2", "grpcio"],
        help="gRPC transport: h2 (the lean HTTP/2 server) or grpcio (grpc.aio).",
    )
    parser.add_argument(
        "--reuse-port",
        action="store_true",
        help="Share --listen with other processes (SO_REUSEPORT: the kernel splits connections); "
        "without it a busy port is an error.",
    )
    parser.add_argument(
        "--h2-limit",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="Change one h2 transport limit (H2Limits field, e.g. max_connections=256); "
        "repeatable; see docs/security.md (default: none, the built-in limits).",
    )
    parser.add_argument(
        "--api-tokens",
        type=Path,
        default=os.environ.get("CASCADE_API_TOKENS") or None,
        help="File of 'caller-name token' lines allowed to call cascade.v1 (Classify, "
        "SubmitFeedback) (default: $CASCADE_API_TOKENS; without either the API refuses every "
        "call).",
    )
    parser.add_argument(
        "--tls-cert",
        type=Path,
        help="PEM certificate: serve gRPC over TLS (default: none, plaintext).",
    )
    parser.add_argument(
        "--tls-key", type=Path, help="PEM private key for --tls-cert (default: none)."
    )
    parser.add_argument(
        "--tls-client-ca",
        type=Path,
        help="PEM CA bundle: require client certificates it signed (mutual TLS; needs --tls-cert; "
        "default: none, no client certificate asked).",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="Least severe log level written.",
    )
    parser.add_argument(
        "--log-format",
        default="text",
        choices=FORMATS,
        help="Log format: text (one escaped line per record) or json (one JSON object per line).",
    )
    parser.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from extproc.app.run import ServeOptions, run
    from extproc.core.errors import ConfigError
    from extproc.transport.h2.limits import H2Limits

    configure_logging(args.log_level, args.log_format)
    if bool(args.tls_cert) != bool(args.tls_key):
        print("cascade: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    if args.tls_client_ca is not None and not args.tls_cert:
        print("cascade: --tls-client-ca needs --tls-cert and --tls-key", file=sys.stderr)
        return 2
    try:
        h2_limits = dict(item.split("=", 1) for item in args.h2_limit)
        H2Limits().replace(h2_limits)
    except ValueError as exc:
        print(f"cascade: --h2-limit: {exc}", file=sys.stderr)
        return 2
    if args.api_tokens is not None:
        from extproc.services.auth import TokenFileError, parse_tokens

        try:
            parse_tokens(Path(args.api_tokens).read_text(), str(args.api_tokens))
        except (OSError, TokenFileError) as exc:
            print(f"cascade: --api-tokens: {exc}", file=sys.stderr)
            return 2
    options = ServeOptions(
        config=args.config or default_config_path(),
        listen=args.listen,
        drain_delay=args.drain_delay,
        grace=args.grace,
        reload_interval=args.reload_interval,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        metrics_listen=None if args.metrics_listen == "off" else args.metrics_listen,
        transport=args.transport,
        h2_limits=h2_limits,
        api_tokens=None if args.api_tokens is None else Path(args.api_tokens),
        reuse_port=args.reuse_port,
    )
    try:
        return asyncio.run(run(options))
    except ConfigError as exc:
        for error in getattr(exc, "errors", (exc,)):
            print(f"cascade: {error}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(
            f"cascade: cannot listen on {args.listen}: {exc.strerror or exc} (another server "
            "there? --reuse-port shares the port on purpose)",
            file=sys.stderr,
        )
        return 2
