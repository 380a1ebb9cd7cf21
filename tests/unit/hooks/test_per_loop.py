"""The event loop's two clients: GETs through httpx-aiohttp's transport, POSTs never (issue #17).

The aiohttp transport reports a connection dropped after sending as ``ConnectTimeout`` ("never
sent"); a submit through it could be resent after it was billed. These tests pin the split: by
method in :func:`shared_async_client`, and again in the transport itself.
"""

from __future__ import annotations

import asyncio
import gc
import json
import ssl
import threading
import weakref
from typing import Any

import httpx
import pytest

from airflow_provider_nanobanana.hooks import per_loop
from airflow_provider_nanobanana.hooks.per_loop import ReadOnlyTransport, shared_async_client
from airflow_provider_nanobanana.hooks.runcomfy import RunComfyHook
from airflow_provider_nanobanana.hooks.settings import RunComfySettings
from airflow_provider_nanobanana.models import EditRequest

SETTINGS = RunComfySettings(token="t", base_url="http://127.0.0.1:9")


def test_gets_and_posts_get_different_clients_shared_per_loop() -> None:
    async def clients() -> tuple[httpx.AsyncClient, ...]:
        get = await shared_async_client(SETTINGS, method="GET")
        post = await shared_async_client(SETTINGS, method="POST")
        again = await shared_async_client(
            RunComfySettings(token="t", base_url="http://127.0.0.1:9"), method="GET"
        )
        default = await shared_async_client(SETTINGS)
        return get, post, again, default

    get, post, again, default = asyncio.run(clients())
    assert isinstance(get._transport, ReadOnlyTransport)
    assert isinstance(post._transport, httpx.AsyncHTTPTransport)
    assert again is get
    assert default is post  # no method: the safe one


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_the_aiohttp_client_refuses_anything_but_a_get_before_connecting(method: str) -> None:
    connections: list[int] = []

    async def attempt() -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connections.append(1)
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        settings = RunComfySettings(token="t", base_url=f"http://127.0.0.1:{port}")
        client = await shared_async_client(settings, method="GET")
        try:
            with pytest.raises(RuntimeError, match=f"{method} refused"):
                await client.request(method, "/v1/models/google/nano-banana-2/edit", json={"a": 1})
        finally:
            await client.aclose()
            server.close()
            await server.wait_closed()

    asyncio.run(attempt())
    assert connections == []  # nothing reached the server


def test_hook_sends_submit_and_cancel_through_httpx_and_polls_through_aiohttp(monkeypatch) -> None:
    """Which transport each of the hook's async calls reaches (answered in-process, no network)."""
    seen: list[tuple[str, str, str]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        body: dict[str, object] = {"request_id": "r1", "status": "in_queue", "queue_position": 3}
        if request.url.path.endswith("/cancel"):
            body = {"request_id": "r1", "outcome": "cancelled"}
        elif request.method == "POST":
            body = {"request_id": "r1"}
        return httpx.Response(200, stream=httpx.ByteStream(json.dumps(body).encode()), request=request)

    async def via_httpx(self, request: httpx.Request) -> httpx.Response:
        seen.append(("httpx", request.method, request.url.path.rsplit("/", 1)[-1]))
        return answer(request)

    async def via_aiohttp(self, request: httpx.Request) -> httpx.Response:
        seen.append(("aiohttp", request.method, request.url.path.rsplit("/", 1)[-1]))
        return answer(request)

    monkeypatch.setattr(httpx.AsyncHTTPTransport, "handle_async_request", via_httpx)
    monkeypatch.setattr(ReadOnlyTransport, "handle_async_request", via_aiohttp)
    hook = RunComfyHook(token="t", base_url="http://127.0.0.1:9")
    request = EditRequest.build(prompt="x", image_urls=["https://img.test/a.png"])

    async def calls() -> None:
        await hook.asubmit(request)
        await hook.aget_status("r1")
        await hook.aget_result("r1")
        await hook.acancel("r1")

    asyncio.run(calls())
    assert seen == [
        ("httpx", "POST", "edit"),
        ("aiohttp", "GET", "status"),
        ("aiohttp", "GET", "result"),
        ("httpx", "POST", "cancel"),
    ]


def test_poll_transport_httpx_sends_gets_through_httpx_too(monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW__NANOBANANA__POLL_TRANSPORT", "httpx")

    async def transport() -> httpx.AsyncBaseTransport:
        return (await shared_async_client(SETTINGS, method="GET"))._transport

    assert isinstance(asyncio.run(transport()), httpx.AsyncHTTPTransport)


def test_an_unknown_poll_transport_falls_back_to_aiohttp(monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW__NANOBANANA__POLL_TRANSPORT", "curl")

    async def transport() -> httpx.AsyncBaseTransport:
        return (await shared_async_client(SETTINGS, method="GET"))._transport

    assert isinstance(asyncio.run(transport()), ReadOnlyTransport)


def test_behind_a_proxy_gets_take_the_same_way_as_posts(monkeypatch) -> None:
    """aiohttp would ignore the environment's proxy (trust_env off, so ~/.netrc is never read)."""
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    remote = RunComfySettings(token="t")  # https://model-api.runcomfy.net

    async def transports() -> tuple[httpx.AsyncBaseTransport, httpx.AsyncBaseTransport]:
        bypassed = RunComfySettings(token="t", base_url="https://model-api.runcomfy.net:8443")
        monkeypatch.setenv("NO_PROXY", "model-api.runcomfy.net")
        through_bypass = (await shared_async_client(bypassed, method="GET"))._transport
        monkeypatch.delenv("NO_PROXY")
        return (await shared_async_client(remote, method="GET"))._transport, through_bypass

    proxied, bypassed = asyncio.run(transports())
    assert isinstance(proxied, httpx.AsyncHTTPTransport)
    assert isinstance(bypassed, ReadOnlyTransport)


@pytest.mark.parametrize(("verify", "mode"), [(True, ssl.CERT_REQUIRED), (False, ssl.CERT_NONE)])
def test_the_aiohttp_client_verifies_tls_as_the_connection_says(verify: bool, mode: ssl.VerifyMode) -> None:
    settings = RunComfySettings(token="t", base_url="https://api.test", verify_tls=verify)

    async def context() -> ssl.SSLContext:
        transport = (await shared_async_client(settings, method="GET"))._transport
        assert isinstance(transport, ReadOnlyTransport)
        return transport.ssl_context

    assert asyncio.run(context()).verify_mode is mode


def test_the_loops_clients_are_closed_when_the_loop_shuts_down() -> None:
    """An aiohttp session left open logs 'Unclosed client session' errors at exit."""

    async def use() -> tuple[httpx.AsyncClient, httpx.AsyncClient]:
        get, post = await shared_async_client(SETTINGS, method="GET"), await shared_async_client(SETTINGS)
        return get, post

    get, post = asyncio.run(use())
    assert get.is_closed
    assert post.is_closed


def test_clients_are_built_off_the_event_loop(monkeypatch) -> None:
    """Building one loads CA bundles into SSL contexts and imports aiohttp: 0.1-0.5 s of CPU that,
    on the loop, held every trigger of a real triggerer (docs/benchmarks-loop-blocks.md)."""
    built_in: list[threading.Thread] = []
    for cls in (httpx.AsyncClient, ReadOnlyTransport):
        original = cls.__init__

        def recording(self: Any, *args: Any, __original: Any = original, **kwargs: Any) -> None:
            built_in.append(threading.current_thread())
            __original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__init__", recording)

    async def build() -> threading.Thread:
        await shared_async_client(SETTINGS, method="GET")
        await shared_async_client(SETTINGS, method="POST")
        return threading.current_thread()

    loop_thread = asyncio.run(build())
    assert len(built_in) == 3  # the GET client, its transport, the POST client
    assert loop_thread not in built_in


def test_triggers_arriving_together_await_one_build(monkeypatch) -> None:
    builds: list[bool] = []
    original = per_loop._new_client

    def counting(settings: RunComfySettings, *, reads: bool) -> httpx.AsyncClient:
        builds.append(reads)
        return original(settings, reads=reads)

    monkeypatch.setattr(per_loop, "_new_client", counting)

    async def many() -> set[int]:
        clients = await asyncio.gather(*(shared_async_client(SETTINGS, method="GET") for _ in range(50)))
        return {id(c) for c in clients}

    assert len(asyncio.run(many())) == 1
    assert builds == [True]


def test_a_failed_build_is_not_kept(monkeypatch) -> None:
    original = per_loop._new_client
    failures = [OSError("CA bundle unreadable")]

    def flaky(settings: RunComfySettings, *, reads: bool) -> httpx.AsyncClient:
        if failures:
            raise failures.pop()
        return original(settings, reads=reads)

    monkeypatch.setattr(per_loop, "_new_client", flaky)

    async def twice() -> httpx.AsyncClient:
        with pytest.raises(OSError, match="CA bundle"):
            await shared_async_client(SETTINGS, method="GET")
        return await shared_async_client(SETTINGS, method="GET")

    assert isinstance(asyncio.run(twice())._transport, ReadOnlyTransport)


def test_the_transport_is_chosen_once_per_loop_not_per_poll(monkeypatch) -> None:
    """Every poll of every trigger looks its client up; reading the option and scanning the proxy
    environment each time showed in the loop's stack samples (docs/benchmarks-loop-blocks.md)."""

    async def twice() -> tuple[httpx.AsyncClient, httpx.AsyncClient]:
        first = await shared_async_client(SETTINGS, method="GET")
        monkeypatch.setenv("AIRFLOW__NANOBANANA__POLL_TRANSPORT", "httpx")
        monkeypatch.setenv("HTTP_PROXY", "http://proxy.internal:3128")
        return first, await shared_async_client(SETTINGS, method="GET")

    first, second = asyncio.run(twice())
    assert second is first
    assert isinstance(first._transport, ReadOnlyTransport)


def test_a_finished_loop_and_its_clients_are_let_go() -> None:
    """The per-loop values hold their loop strongly; a weak key alone never let a loop go."""

    async def lookup() -> RunComfySettings:
        return SETTINGS

    async def use() -> tuple[weakref.ref[asyncio.AbstractEventLoop], weakref.ref[httpx.AsyncClient]]:
        client = await shared_async_client(SETTINGS, method="GET")
        await per_loop.settings_of_loop("runcomfy_default", lookup)
        return weakref.ref(asyncio.get_running_loop()), weakref.ref(client)

    loop, client = asyncio.run(use())
    gc.collect()
    assert loop() is None
    assert client() is None


def test_a_waiter_that_ends_after_its_loops_release_does_not_raise() -> None:
    """A trigger's generator closed by ``shutdown_asyncgens`` can end after the loop's release ran."""

    async def wait_past_release() -> int:
        await shared_async_client(SETTINGS, method="GET")  # loop state, so a release is registered
        with per_loop.waiting_on_loop():
            await asyncio.get_running_loop().shutdown_asyncgens()  # the release runs here
            assert asyncio.get_running_loop() not in per_loop._WAITERS  # so this waiter outlives it
        return per_loop.waiters_on_loop()

    assert asyncio.run(wait_past_release()) == 0
