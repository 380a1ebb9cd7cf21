"""The output-host allow-list (``media/hosts.py``): the SSRF guard."""

from __future__ import annotations

import pytest

from airflow_provider_nanobanana.media.hosts import host_allowed, normalise_host_patterns, output_url_problem


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("files.runcomfy.net", True),
        ("a.b.runcomfy.net", True),
        ("FILES.RunComfy.NET.", True),
        ("runcomfy.net", False),
        ("evilruncomfy.net", False),
        ("runcomfy.net.evil.com", False),
        ("model-api.runcomfy.com", True),
        ("127.0.0.1", False),
    ],
)
def test_host_patterns(host: str, allowed: bool) -> None:
    patterns = normalise_host_patterns(["*.runcomfy.net", "model-api.runcomfy.com"])
    assert host_allowed(host, patterns) is allowed


@pytest.mark.parametrize("pattern", ["*", "*.", "*.com", "a*.runcomfy.net", "", "http://x.com/"])
def test_too_broad_or_malformed_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(ValueError, match="allowed_output_hosts"):
        normalise_host_patterns([pattern])


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://files.runcomfy.net/a.png", None),
        ("ftp://files.runcomfy.net/a.png", "scheme 'ftp'"),
        ("file:///etc/passwd", "scheme 'file'"),
        ("https://files.runcomfy.net@169.254.169.254/latest", "host '169.254.169.254'"),
        ("http://169.254.169.254/latest/meta-data", "not in allowed_output_hosts"),
        ("https:///nohost", "no host"),
    ],
)
def test_output_url_problem(url: str, problem: str | None) -> None:
    found = output_url_problem(url, normalise_host_patterns(["*.runcomfy.net"]))
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert problem in found
