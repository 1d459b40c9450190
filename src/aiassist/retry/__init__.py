"""Deprecated: smart retries live in `aiassist.modules.retry` now (`decorator`, `policy`,
`budget`, `errors`, `tracker`); kept for one release."""

from aiassist._deprecated import moved

__getattr__ = moved(
    __name__,
    *(
        f"aiassist.modules.retry.{name}"
        for name in ("decorator", "policy", "budget", "errors", "tracker")
    ),
)
