"""Where outputs may be fetched from: the output-host allow-list (the SSRF guard).

The output list comes from a remote JSON document, so it must not steer the worker to another host
(the cloud metadata service, an internal admin page). Only http(s) URLs on allowed hosts are fetched,
and the archiver checks every redirect hop against the same list.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit


def normalise_host_patterns(patterns: Iterable[str]) -> tuple[str, ...]:
    """Lower-case host patterns: exact hosts (``model-api.runcomfy.net``) or ``*.suffix`` wildcards."""
    result = []
    for raw in patterns:
        pattern = str(raw).strip().lower().rstrip(".").strip("[]")
        if pattern.startswith("*."):
            suffix = pattern[2:]
            if not suffix or "*" in suffix or "." not in suffix.strip("."):
                raise ValueError(f"allowed_output_hosts: {raw!r} is too broad; use e.g. '*.runcomfy.net'")
        elif not pattern or "*" in pattern or "/" in pattern:
            raise ValueError(f"allowed_output_hosts: {raw!r} is not a host name or '*.suffix' pattern")
        result.append(pattern)
    return tuple(dict.fromkeys(result))


def host_allowed(host: str, patterns: Sequence[str]) -> bool:
    host = host.lower().rstrip(".")
    for pattern in patterns:
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                return True
        elif host == pattern:
            return True
    return False


def output_url_problem(url: str, patterns: Sequence[str]) -> str | None:
    """Why ``url`` may not be fetched (``None`` if it may): only http(s) to an allowed host."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("http", "https"):
        return f"has scheme {parts.scheme or '(none)'!r}; only http and https outputs are fetched"
    if not host:
        return "has no host"
    if not host_allowed(host, patterns):
        allowed = ", ".join(patterns) or "(none configured)"
        return f"is on host {host!r}, which is not in allowed_output_hosts ({allowed})"
    return None
