"""Running a coroutine that cannot wait without an event-loop round trip."""

from __future__ import annotations

import logging
from collections.abc import Coroutine
from typing import Any

logger = logging.getLogger(__name__)


def finish_without_waiting(coroutine: Coroutine[Any, Any, None]) -> bool:
    """Run a coroutine that never suspends to its end; False (and closed) if it did suspend."""
    try:
        coroutine.send(None)
    except StopIteration:
        return True
    except Exception:
        logger.exception("telemetry completion failed")
        return True
    coroutine.close()
    return False
