"""`cascade cache invalidate`: drop every response-cache entry of a running server (and, with the
Redis backend, of every replica sharing it). The caller's token must belong to a caller named
in `cache.admin_callers`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

TOKEN_ENV = "CASCADE_API_TOKEN"


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "cache",
        help="Administer the response cache of a running server.",
        description="Administer the response cache of a running server (docs/cache.md).",
    )
    actions = parser.add_subparsers(dest="cache_command", metavar="ACTION", required=True)
    invalidate = actions.add_parser(
        "invalidate",
        help="Drop every cached answer.",
        description="Drop every cached answer (every replica, with the Redis backend).",
    )
    invalidate.add_argument(
        "--target", default="127.0.0.1:50051", help="The server's gRPC address (host:port)."
    )
    invalidate.add_argument(
        "--token-file",
        type=Path,
        default=None,
        help=f"File holding the API token (default: the {TOKEN_ENV} environment variable).",
    )
    invalidate.add_argument(
        "--tls-ca",
        type=Path,
        default=None,
        help="CA bundle to verify the server's certificate (default: plaintext).",
    )
    invalidate.add_argument(
        "--timeout", type=float, default=10.0, help="Seconds to wait for the answer."
    )
    invalidate.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import grpc

    from extproc._pb.cascade.v1 import cascade_pb2 as pb
    from extproc._pb.cascade.v1 import cascade_pb2_grpc as pb_grpc

    if args.token_file is not None:
        token = args.token_file.read_text().strip()
    else:
        token = os.environ.get(TOKEN_ENV, "")
    if not token:
        print(f"cascade cache: no token (--token-file or {TOKEN_ENV})", file=sys.stderr)
        return 2
    if args.tls_ca is not None:
        credentials = grpc.ssl_channel_credentials(args.tls_ca.read_bytes())
        channel = grpc.secure_channel(args.target, credentials)
    else:
        channel = grpc.insecure_channel(args.target)
    with channel:
        stub = pb_grpc.CascadeStub(channel)  # type: ignore[no-untyped-call]
        try:
            answer = stub.InvalidateCache(
                pb.InvalidateCacheRequest(),
                metadata=[("authorization", f"Bearer {token}")],
                timeout=args.timeout,
            )
        except grpc.RpcError as exc:
            print(f"cascade cache: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    print(f"dropped {answer.dropped} entries")
    return 0
