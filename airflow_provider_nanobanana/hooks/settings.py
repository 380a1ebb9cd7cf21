"""Everything a RunComfy client needs, read once from an Airflow connection (or given directly).

The token leaves :class:`RunComfySettings` only as an ``Authorization`` header: it is excluded from
``repr`` and hashed in the key that shares clients.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from airflow_provider_nanobanana import __version__
from airflow_provider_nanobanana.bodies import ACCEPT_ENCODING
from airflow_provider_nanobanana.exceptions import RunComfyAuthError
from airflow_provider_nanobanana.models import DEFAULT_MODEL_ID

DEFAULT_BASE_URL = "https://model-api.runcomfy.net"

_MODEL_ID_SEGMENT = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


@dataclass(frozen=True)
class RunComfySettings:
    """Everything a client needs, read once from a connection (or given directly, for scripts).

    The token is excluded from ``repr`` and equality-derived output; it only ever leaves this object
    as an ``Authorization`` header.
    """

    token: str = field(repr=False)
    base_url: str = DEFAULT_BASE_URL
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0
    #: RunComfy's own clients wait 60-120 s for a submit; giving up sooner turns a slow but
    #: successful submit into an ambiguous one (paid, id unknown).
    submit_read_timeout_s: float = 120.0
    #: Total time one status/result/cancel exchange may take, connect and every read included (a
    #: server that trickles bytes must not hold a poll for minutes). A submit gets its read timeout
    #: plus the connect timeout.
    exchange_timeout_s: float = 60.0
    max_retries: int = 4
    retry_max_wait_s: float = 30.0
    retry_total_s: float = 120.0
    allow_insecure_inputs: bool = False
    verify_tls: bool = True
    output_hosts: tuple[str, ...] = ()
    #: Base URL of RunComfy's core API, where ``GET /balance`` lives (not the Model API host); from
    #: the connection extra ``balance_url``. ``None``: budget pre-flights skip the balance check.
    balance_url: str | None = None

    def __post_init__(self) -> None:
        if not self.token:
            raise RunComfyAuthError("no RunComfy API token: set the connection's password (API token)")
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url must be an http(s) URL, got {self.base_url!r}")
        for name in ("connect_timeout_s", "read_timeout_s", "submit_read_timeout_s", "exchange_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ValueError(f"{name} must be a finite number of seconds > 0, got {value!r}")
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))
        if self.balance_url is not None:
            balance = urlsplit(self.balance_url)
            if balance.scheme not in ("http", "https") or not balance.hostname:
                raise ValueError(f"balance_url must be an http(s) URL, got {self.balance_url!r}")
            if balance.scheme != "https" and not self.allow_insecure_inputs:
                # The API token goes there as a Bearer header: never in clear text by accident.
                raise ValueError(
                    f"balance_url must be https (the API token is sent there), got {self.balance_url!r}; "
                    "set allow_insecure_inputs on the connection only for a local test server"
                )
            object.__setattr__(self, "balance_url", self.balance_url.rstrip("/"))

    @classmethod
    def from_connection(cls, conn: Any) -> RunComfySettings:
        """Build settings from an Airflow connection: password = token, host = optional base URL."""
        extra = _connection_extra(conn)
        base_url = _base_url_from_connection(conn)
        known = {
            "connect_timeout_s": float,
            "read_timeout_s": float,
            "submit_read_timeout_s": float,
            "exchange_timeout_s": float,
            "max_retries": int,
            "retry_max_wait_s": float,
            "retry_total_s": float,
        }
        kwargs: dict[str, Any] = {name: cast(extra[name]) for name, cast in known.items() if name in extra}
        for flag in ("allow_insecure_inputs", "verify_tls"):
            if flag in extra:
                kwargs[flag] = _as_bool(extra[flag], flag)
        if "output_hosts" in extra:
            hosts = extra["output_hosts"]
            kwargs["output_hosts"] = tuple(hosts.split(",") if isinstance(hosts, str) else hosts)
        if "balance_url" in extra:
            kwargs["balance_url"] = str(extra["balance_url"]).strip()
        return cls(token=conn.password or "", base_url=base_url, **kwargs)

    @property
    def submit_exchange_s(self) -> float:
        """The longest a submit can take before it is abandoned (and so known to be over)."""
        return self.submit_read_timeout_s + self.connect_timeout_s

    @property
    def allowed_output_hosts(self) -> tuple[str, ...]:
        """Hosts outputs may be downloaded from: the API's own host, RunComfy's CDNs, and any extras."""
        api_host = urlsplit(self.base_url).hostname or ""
        return (api_host, "*.runcomfy.net", "*.runcomfy.com", *self.output_hosts)

    def client_kwargs(self) -> dict[str, Any]:
        """Shared by ``httpx.Client`` and ``httpx.AsyncClient`` so both read the settings the same way."""
        return {
            "base_url": self.base_url,
            "headers": {
                "Authorization": f"Bearer {self.token}",
                "User-Agent": f"airflow-provider-nanobanana/{__version__}",
                "Accept": "application/json",
                "Accept-Encoding": ACCEPT_ENCODING,
            },
            "timeout": httpx.Timeout(self.read_timeout_s, connect=self.connect_timeout_s),
            "verify": self.verify_tls,
            "follow_redirects": False,
        }

    @functools.cached_property
    def cache_key(self) -> tuple[object, ...]:
        """Identity for sharing one async client; holds a digest of the token, never the token.

        Computed once per settings object: every poll of every trigger looks its client up by it.
        """
        digest = hashlib.sha256(self.token.encode()).hexdigest()
        return (self.base_url, digest, self.connect_timeout_s, self.read_timeout_s, self.verify_tls)


_UI_PREFIX = "extra__runcomfy__"


def _connection_extra(conn: Any) -> dict[str, Any]:
    """The connection's extras; keys saved by the UI form (``extra__runcomfy__x``) count as ``x``."""
    extra = getattr(conn, "extra_dejson", None)
    if extra is None:
        raw = getattr(conn, "extra", None) or "{}"
        extra = json.loads(raw) if isinstance(raw, str) else dict(raw)
    return {key.removeprefix(_UI_PREFIX): value for key, value in extra.items() if value not in (None, "")}


def _base_url_from_connection(conn: Any) -> str:
    host = (conn.host or "").strip()
    if not host:
        return DEFAULT_BASE_URL
    if "://" in host:
        return host
    scheme = conn.schema or "https"
    port = f":{conn.port}" if conn.port else ""
    return f"{scheme}://{host}{port}"


def _as_bool(value: object, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"connection extra {name!r} must be true or false, got {value!r}")


def model_path(model_id: str) -> str:
    """``/v1/models/{model_id}``; the id keeps its slashes but no segment may be empty or ``..``."""
    segments = model_id.split("/")
    if not all(s and s not in (".", "..") and set(s) <= _MODEL_ID_SEGMENT for s in segments):
        raise ValueError(f"model_id {model_id!r} is not a RunComfy model id like {DEFAULT_MODEL_ID!r}")
    return "/v1/models/" + "/".join(quote(s) for s in segments)
