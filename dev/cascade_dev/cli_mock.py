"""`cascade mock-backend`: a mock OpenAI-compatible backend for the demo, tests and trying out."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cascade_dev.mock_backend import MockBackend


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "mock-backend",
        help="Run a mock OpenAI-compatible backend that answers with its own name.",
        description=(
            "Serve /v1/chat/completions (JSON and SSE), /v1/models and /healthz, with failures "
            "injectable per request (x-mock-fail: 503, x-mock-fail: 429:2, x-mock-delay-ms) or "
            "scripted through POST /_mock/script, and answers shaped per request (x-mock-finish-"
            'reason, x-mock-content, x-mock-refusal, x-mock-ttfb-ms, "logprobs": true). Runs '
            "until SIGINT or SIGTERM, then exits 0. "
            "See docs/mock-backends.md."
        ),
    )
    parser.add_argument("--name", default="mock", help="Backend name shown in answers.")
    parser.add_argument(
        "--model",
        dest="models",
        action="append",
        metavar="MODEL",
        help="Model served; repeat for several (default: mock-model).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="Address to bind.")
    parser.add_argument("--port", type=int, default=18081, help="Port to bind; 0 picks a free one.")
    parser.add_argument(
        "--stream-delay-ms", type=int, default=50, help="Delay between SSE events, milliseconds."
    )
    parser.add_argument(
        "--stream-chunks", type=int, default=4, help="Content events per streamed answer."
    )
    parser.add_argument(
        "--strict-models",
        action="store_true",
        help="Answer 404 model_not_found for a model not given with --model.",
    )
    parser.add_argument(
        "--judge",
        choices=("fair", "first"),
        help="Answer as a pairwise judge for `cascade judge` (docs/mock-backends.md; "
        "default: answer as a model).",
    )
    parser.add_argument("--quiet", action="store_true", help="No per-request log lines.")
    parser.set_defaults(func=run_mock_backend)


def run_mock_backend(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from cascade_dev.mock_backend import MockBackend

    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    try:
        backend = MockBackend(
            args.name,
            args.models or ["mock-model"],
            host=args.host,
            port=args.port,
            stream_delay_ms=args.stream_delay_ms,
            stream_chunks=args.stream_chunks,
            strict_models=args.strict_models,
            judge=args.judge,
        )
    except ValueError as exc:
        print(f"cascade: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_serve(backend))


async def _serve(backend: MockBackend) -> int:
    import asyncio
    import signal

    try:
        await backend.start()
    except OSError as exc:
        print(f"cascade: cannot listen on {backend.host}:{backend.port}: {exc}", file=sys.stderr)
        return 1
    print(
        f"mock backend {backend.name} listening on {backend.url} "
        f"(models: {', '.join(backend.models)})",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)
        await backend.stop()
    return 0
