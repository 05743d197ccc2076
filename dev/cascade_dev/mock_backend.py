"""Mock OpenAI-compatible backends: for the tests, the demo and for trying the gateway.

The implementation lives in `cascade_dev.mock` (on aiohttp); this module keeps the public names
where their importers expect them. The contract (endpoints, headers, failure injection, answer
controls) is docs/mock-backends.md.
"""

from cascade_dev.mock import (
    CHAT_PATH,
    CONTROL_PREFIX,
    HEALTH_PATH,
    MODELS_PATH,
    Fault,
    FaultSpec,
    MockBackend,
    MockBackendThread,
    RecordedRequest,
)

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
