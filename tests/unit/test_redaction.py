"""Redaction by allow-list: a URL keeps scheme, host, port and path; every query value not known to be
harmless becomes ``***``, user-info and fragment go; free text loses URL credentials and bearer tokens."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

import pytest

from airflow_provider_nanobanana.redaction import (
    HARMLESS_QUERY_PARAMS,
    RedactURLsFilter,
    mask_url_secrets,
    redact_httpx_logs,
    redact_text,
    redact_tree,
    redact_url,
    secret_values,
)
from tests.fakes import fresh_interpreter_prints

SECRET = "s3cr3t-VALUE-0123456789"


@pytest.mark.parametrize(
    "name",
    [
        "X-Amz-Signature",
        "x-amz-signature",
        "X-Amz-Credential",
        "X-Amz-Security-Token",
        "sig",
        "Signature",
        "token",
        "access_token",
        "api_key",
        "apikey",
        "key",
        "X-Goog-Signature",
        "X-Goog-Credential",
        "se",
        "sp",
        "sv",
        "skoid",
        "sktid",
        "AWSAccessKeyId",
        "foo",
        "%61ccess_token",
        "access%5Ftoken",
        "a+b",
    ],
)
def test_every_parameter_not_on_the_allow_list_loses_its_value(name: str) -> None:
    url = f"https://cdn.example.com/out/0.png?{name}={SECRET}&format=png"
    redacted = redact_url(url)
    assert SECRET not in redacted
    assert redacted == f"https://cdn.example.com/out/0.png?{name}=***&format=png"  # the name stays visible
    assert SECRET in secret_values(url)


def test_harmless_parameters_keep_their_values_whatever_their_spelling() -> None:
    url = (
        "https://b.s3.amazonaws.com/k.png?X-Amz-Algorithm=AWS4-HMAC-SHA256&x-amz-date=20260101T000000Z"
        "&X-Amz-Expires=600&X-Amz-SignedHeaders=host&X-Amz-Signature=abc&WIDTH=5&%66ormat=png&Expires=9"
    )
    assert redact_url(url) == (
        "https://b.s3.amazonaws.com/k.png?X-Amz-Algorithm=AWS4-HMAC-SHA256&x-amz-date=20260101T000000Z"
        "&X-Amz-Expires=600&X-Amz-SignedHeaders=host&X-Amz-Signature=***&WIDTH=5&%66ormat=png&Expires=9"
    )
    assert secret_values(url) == ["abc"]
    assert "x-amz-signature" not in HARMLESS_QUERY_PARAMS
    assert "x-amz-credential" not in HARMLESS_QUERY_PARAMS


def test_the_allow_list_is_small_and_lower_case() -> None:
    assert len(HARMLESS_QUERY_PARAMS) <= 16
    assert all(name == name.lower() for name in HARMLESS_QUERY_PARAMS)


def test_repeated_parameters_semicolons_and_bare_values() -> None:
    url = "https://h/p?token=one&token=two;sig=three&format=jpg&BAREVALUE&empty=&&"
    assert redact_url(url) == "https://h/p?token=***&token=***;sig=***&format=jpg&***&empty=***&&"
    assert secret_values(url) == ["one", "two", "three", "BAREVALUE"]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://user:pw@host.example/a.png", "https://host.example/a.png"),
        ("https://user@host.example/a.png", "https://host.example/a.png"),
        ("https://:pw@host.example:8443/a", "https://host.example:8443/a"),
        ("https://us%40er:p@ss@host.example/a", "https://host.example/a"),
        ("https://u:p@[2001:db8::1]:8443/p?token=x", "https://[2001:db8::1]:8443/p?token=***"),
        ("http://[::1]/p.png", "http://[::1]/p.png"),
        ("HTTPS://Host.Example:99999/p?sig=x", "HTTPS://Host.Example:99999/p?sig=***"),  # bad port: no crash
        ("https://h/p.png#access_token=abc", "https://h/p.png"),
        ("https://h/p.png?sig=abc#frag", "https://h/p.png?sig=***"),
        ("https://h/p.png?", "https://h/p.png"),
        ("https://h", "https://h"),
        ("https://h/a%20b.png", "https://h/a%20b.png"),
    ],
)
def test_user_info_fragment_and_hosts(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_user_info_secrets_are_registered_with_the_masker() -> None:
    assert secret_values("https://user:pa%24%24word@h/") == ["pa%24%24word", "pa$$word"]
    assert secret_values("https://ghp_TOKEN123@h/") == ["ghp_TOKEN123"]  # a user name that is a token
    assert secret_values("https://h/p.png") == []


@pytest.mark.parametrize(
    "text",
    [
        "",
        "make it blue",
        "Bearer of good news",  # not a token: too short to be one
        "s3://bucket/in/cat.png",
        "s3://bucket/odd?key=name.png",  # S3 keys are literal: "?" belongs to the key
        "/local/path/photo.png",
        "file:///tmp/a.png",
        "what? nothing = here & there",
        "data:image/png;base64,AAAA",
    ],
)
def test_strings_without_credentials_are_untouched(text: str) -> None:
    assert redact_text(text) == text
    assert redact_url(text) == text


def test_urls_inside_sentences_lose_their_credentials_and_keep_the_punctuation() -> None:
    text = (
        f"cannot fetch https://alice:{SECRET}@cdn.example/a.png?X-Amz-Signature={SECRET}&format=png. "
        f"Retry (see https://docs.example/x?key={SECRET}), or https://h/y#t={SECRET}!"
    )
    assert redact_text(text) == (
        "cannot fetch https://cdn.example/a.png?X-Amz-Signature=***&format=png. "
        "Retry (see https://docs.example/x?key=***), or https://h/y!"
    )


def test_query_strings_without_a_scheme_are_redacted_in_text() -> None:
    text = f'GET /v1/files?access_token={SECRET}&width=4 "https:\\/\\/h\\/x?sig={SECRET}"'
    redacted = redact_text(text)
    assert SECRET not in redacted
    assert "/v1/files?access_token=***&width=4" in redacted


@pytest.mark.parametrize(
    "text",
    [
        f"Authorization: Bearer {SECRET}",
        f"authorization: Token {SECRET}",
        f"Proxy-Authorization: Basic {SECRET}",
        json.dumps({"headers": {"Authorization": f"Bearer {SECRET}"}}),
        f"{{'authorization': 'Bearer {SECRET}'}}",
        f"error 401: invalid bearer {SECRET} for request req-1",
        f"Authorization={SECRET}, retry later",
    ],
)
def test_bearer_tokens_and_authorization_values_are_blanked(text: str) -> None:
    redacted = redact_text(text)
    assert SECRET not in redacted
    assert "***" in redacted


def test_redact_text_is_idempotent() -> None:
    text = f"Authorization: Bearer {SECRET} at https://u:p@h/x?sig={SECRET}&format=png;bare"
    once = redact_text(text)
    assert redact_text(once) == once


def test_redact_tree_blanks_signatures_everywhere() -> None:
    tree = {
        "image_urls": ["https://b.s3/x.png?X-Amz-Signature=abc123&X-Amz-Credential=AKIA"],
        "note": f"echo: https://h/p?api_key={SECRET}",
        "nested": ({"url": f"https://u:{SECRET}@h/"},),
        "n": 1,
        "ok": None,
        "flag": True,
    }
    redacted = redact_tree(tree)
    text = json.dumps(redacted)
    assert "abc123" not in text
    assert "AKIA" not in text
    assert SECRET not in text
    assert redacted["n"] == 1
    assert redacted["ok"] is None
    assert redacted["flag"] is True
    assert redacted["nested"] == [{"url": "https://h/"}]


def test_mask_url_secrets_reaches_airflows_masker() -> None:
    from airflow.sdk._shared.secrets_masker import redact

    url = f"https://h/p.png?api_key={SECRET}&format=png"
    mask_url_secrets(url)
    assert SECRET not in str(redact(f"user code logged {url}"))


def test_importing_the_package_installs_no_log_filter() -> None:
    script = (
        "import logging, airflow_provider_nanobanana.hooks.runcomfy, airflow_provider_nanobanana.models, "
        "airflow_provider_nanobanana.media.hook, airflow_provider_nanobanana.media.archiver; "
        "print(len(logging.getLogger('httpx').filters))"
    )
    assert fresh_interpreter_prints(script) == "0"


def test_redaction_is_pure_python_the_emulator_can_import_without_airflow() -> None:
    script = "import sys, airflow_provider_nanobanana.redaction; print('airflow' in sys.modules)"
    assert fresh_interpreter_prints(script) == "False"


def test_httpx_filter_is_installed_once(caplog: pytest.LogCaptureFixture) -> None:
    httpx_log = logging.getLogger("httpx")
    redact_httpx_logs()
    redact_httpx_logs()  # idempotent: one filter, not two
    assert sum(isinstance(f, RedactURLsFilter) for f in httpx_log.filters) == 1
    caplog.set_level(logging.INFO, logger="httpx")
    httpx_log.info('HTTP Request: %s %s "%s"', "GET", "https://cdn/x.png?sig=SECRET1&key=SECRET2", "200 OK")
    httpx_log.info("plain https://u:SECRET3@h/ %d", 200)
    assert "SECRET" not in caplog.text
    assert "sig=***&key=***" in caplog.text
    assert "plain https://h/ 200" in caplog.text


def test_every_client_factory_installs_the_filter() -> None:
    from airflow_provider_nanobanana.hooks.runcomfy import RunComfyHook, shared_async_client
    from airflow_provider_nanobanana.media import S3MediaHook

    httpx_log = logging.getLogger("httpx")

    def installed_by(create: Callable[[], object]) -> bool:
        for existing in [f for f in httpx_log.filters if isinstance(f, RedactURLsFilter)]:
            httpx_log.removeFilter(existing)
        create()
        return any(isinstance(f, RedactURLsFilter) for f in httpx_log.filters)

    hook = RunComfyHook(token="t", base_url="http://127.0.0.1:9")

    async def async_client() -> None:
        await (await shared_async_client(hook.settings)).aclose()

    assert installed_by(lambda: hook.get_conn().close())
    assert installed_by(lambda: asyncio.run(async_client()))
    assert installed_by(lambda: S3MediaHook(None).archiver.http_client().close())


@pytest.mark.parametrize(
    "text",
    ["x" * 1_000_000, "https" * 200_000, "?a" * 300_000, "Bearer " * 100_000, "a://" * 200_000],
    ids=["one-long-word", "scheme-like-word", "many-question-marks", "many-bearers", "many-schemes"],
)
@pytest.mark.timeout(20)  # a backtracking pattern would take hours on these; linear ones, milliseconds
def test_long_text_takes_linear_time(text: str) -> None:
    assert len(redact_text(text)) >= len(text) // 2
