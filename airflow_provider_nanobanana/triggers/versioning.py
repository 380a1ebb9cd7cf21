"""Versioned trigger kwargs: a trigger deferred before an upgrade must finish after it.

Airflow stores a trigger as its class path and the kwargs its ``serialize()`` returned, and rebuilds
it with ``cls(**kwargs)`` in whatever version of the provider the triggerer runs. Every kwarg a new
version adds therefore has a default that means "what the old version did", and the kwargs carry a
``kwargs_version`` (absent, and so 1, for 0.1.0). A version newer than the code (a downgrade while
tasks were deferred) is refused with a clear message rather than half-understood.
"""

from __future__ import annotations


def check_kwargs_version(trigger: type, found: int, supported: int) -> None:
    if not isinstance(found, int) or not 1 <= found <= supported:
        raise ValueError(
            f"{trigger.__name__} kwargs version {found!r} is not one this provider understands "
            f"(1..{supported}); it was deferred by a newer airflow-provider-nanobanana"
        )
