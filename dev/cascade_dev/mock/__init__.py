"""Mock OpenAI-compatible backends on aiohttp: for the tests, the demo and trying the gateway.

Modules: `faults` (response specs), `answers` (pure builders of completions, SSE chunks, usage,
logprobs), `controls` (per-request `x-mock-*` headers), `state` (script and recorded requests),
`wire` (aiohttp plumbing), `api` (`/v1/...`), `server` (`MockBackend`), `thread`
(`MockBackendThread`). The contract is docs/mock-backends.md.
"""

from cascade_dev.mock.api import CHAT_PATH, MODELS_PATH
from cascade_dev.mock.faults import Fault, FaultSpec
from cascade_dev.mock.server import CONTROL_PREFIX, HEALTH_PATH, MockBackend
from cascade_dev.mock.state import RecordedRequest
from cascade_dev.mock.thread import MockBackendThread

__all__ = [
    "CHAT_PATH",
    "CONTROL_PREFIX",
    "HEALTH_PATH",
    "MODELS_PATH",
    "Fault",
    "FaultSpec",
    "MockBackend",
    "MockBackendThread",
    "RecordedRequest",
]
