"""Celery adapters, one per use (each needs the `celery` extra):

- `priority`: score a task when it is enqueued and let the broker run it in that order;
- `retry`: `SmartRetryTask`, whose retries the `retry` module decides;
- `agent`: agent runs and flows driven by Celery workers.

Until the next release the names of `priority` are also found here, as they were when this
package was one module, with a `DeprecationWarning`.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any


def __getattr__(name: str) -> Any:
    priority = importlib.import_module(f"{__name__}.priority")
    if name not in priority.__all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"{__name__}.{name} is deprecated and goes away in the next release; import it from "
        f"{__name__}.priority",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(priority, name)
