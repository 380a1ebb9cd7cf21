"""Shared fixtures: an isolated AIRFLOW_HOME, a real S3 API (moto server) and the RunComfy emulator.

Airflow reads its configuration once, at first import, so the environment is set here at module
top, before any test module imports airflow.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="nanobanana-airflow-home-"))
os.environ.setdefault("AIRFLOW_HOME", str(_AIRFLOW_HOME))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "True")
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(Path(__file__).resolve().parent / "dags"))
# The defer-race guards (wait on the worker before deferring, hold a trigger's event) have tests of
# their own; everywhere else a task defers right after one look and a trigger fires at once, so each
# suite tests its own subject without their seconds. Real deployments (devstack) use the defaults.
os.environ.setdefault("AIRFLOW__NANOBANANA__WAIT_BEFORE_DEFER_S", "0")
os.environ.setdefault("AIRFLOW__NANOBANANA__MIN_DEFERRAL_S", "0")
# boto3 must never reach for real credentials or instance metadata.
for _name, _value in {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}.items():
    os.environ.setdefault(_name, _value)

import logging  # noqa: E402

import boto3  # noqa: E402
import pytest  # noqa: E402
from botocore.config import Config  # noqa: E402

logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's per-request access log


@pytest.fixture(autouse=True)
def _respx_mocked_modules_poll_through_httpx(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """respx mocks httpx's own transport, not the aiohttp one that sends the event loop's GETs: a test
    module that mocks with respx polls through httpx's transport (``[nanobanana] poll_transport``)."""
    if request.module is not None and "respx" in vars(request.module):
        monkeypatch.setenv("AIRFLOW__NANOBANANA__POLL_TRANSPORT", "httpx")


class MotoS3:
    """A moto server on loopback: a real S3 HTTP API, shared by the session."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"

    def client(self):
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            config=Config(signature_version="s3v4"),
        )

    def aws_conn_json(self) -> str:
        """The Amazon provider connection that points at this server (AIRFLOW_CONN_* JSON form)."""
        import json

        return json.dumps(
            {
                "conn_type": "aws",
                "login": "testing",
                "password": "testing",
                "extra": {"endpoint_url": self.endpoint_url, "region_name": "us-east-1"},
            }
        )

    def stop(self) -> None:
        self._server.stop()


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    server = MotoS3()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(moto_s3: MotoS3, request: pytest.FixtureRequest) -> str:
    """A fresh, empty bucket per test (names derived from the test, so failures are traceable)."""
    import re

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    bucket = f"t-{name}-{os.urandom(3).hex()}"
    moto_s3.client().create_bucket(Bucket=bucket)
    return bucket


# -- the RunComfy emulator and images to edit ---------------------------------------------------


@pytest.fixture
def emulator():
    """A fresh emulator per test on an ephemeral port: short queue and run times, no faults."""
    from airflow_provider_nanobanana.emulator import EmulatorConfig, EmulatorServer

    with EmulatorServer(EmulatorConfig(queue_s=0.2, run_s=0.3, max_running=4)) as server:
        yield server


def png_bytes(colour: tuple[int, int, int] = (200, 80, 40), size: tuple[int, int] = (64, 48)) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def input_image(moto_s3: MotoS3, s3_bucket: str) -> str:
    """An s3:// URI of a small PNG in the test's bucket."""
    moto_s3.client().put_object(
        Bucket=s3_bucket, Key="inputs/cat.png", Body=png_bytes(), ContentType="image/png"
    )
    return f"s3://{s3_bucket}/inputs/cat.png"


@pytest.fixture
def presigned_input(moto_s3: MotoS3, input_image: str) -> str:
    bucket, _, key = input_image[5:].partition("/")
    return moto_s3.client().generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=3600
    )


@pytest.fixture
def airflow_connections(monkeypatch: pytest.MonkeyPatch, emulator, moto_s3: MotoS3) -> None:
    """``runcomfy_default`` → the emulator, ``aws_default`` → moto, as a deployment would set them."""
    import json

    monkeypatch.setenv(
        "AIRFLOW_CONN_RUNCOMFY_DEFAULT",
        json.dumps(
            {
                "conn_type": "runcomfy",
                "host": emulator.base_url,
                "password": emulator.token,
                "extra": {"allow_insecure_inputs": True, "retry_max_wait_s": 0.05},
            }
        ),
    )
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", moto_s3.aws_conn_json())
