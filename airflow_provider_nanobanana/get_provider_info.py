"""Provider metadata Airflow discovers through the ``apache_airflow_provider`` entry point.

The connection form is declared here (``ui-field-behaviour``, ``conn-fields``): since Airflow 3.2 the
hook methods that used to describe it are deprecated and no longer called.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_nanobanana import __version__

PACKAGE = "airflow_provider_nanobanana"


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "airflow-provider-nanobanana",
        "name": "RunComfy Nano Banana",
        "description": "Edit images with RunComfy's Model API (google/nano-banana-2/edit) from Airflow.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "RunComfy",
                "external-doc-url": "https://docs.runcomfy.com/model-apis/async-queue-endpoints",
                "tags": ["service"],
            }
        ],
        "hooks": [
            {"integration-name": "RunComfy", "python-modules": [f"{PACKAGE}.hooks.runcomfy"]},
            {"integration-name": "RunComfy", "python-modules": [f"{PACKAGE}.media.hook"]},
        ],
        "operators": [
            {
                "integration-name": "RunComfy",
                "python-modules": [
                    f"{PACKAGE}.operators.nano_banana",
                    f"{PACKAGE}.batch.operator",
                    f"{PACKAGE}.report.fleet",
                ],
            }
        ],
        "sensors": [{"integration-name": "RunComfy", "python-modules": [f"{PACKAGE}.sensors.runcomfy"]}],
        "triggers": [
            {
                "integration-name": "RunComfy",
                "python-modules": [
                    f"{PACKAGE}.triggers.runcomfy",
                    f"{PACKAGE}.batch.trigger",
                    f"{PACKAGE}.triggers.s3_events",
                ],
            }
        ],
        # The page the "RunComfy request" link opens, served by the API server (request_page.py).
        "plugins": [{"name": "nanobanana", "plugin-class": f"{PACKAGE}.request_page.NanoBananaPlugin"}],
        "extra-links": [f"{PACKAGE}.links.RunComfyRequestLink", f"{PACKAGE}.report.link.ContactSheetLink"],
        "config": {
            "nanobanana": {
                "description": "Polling and deferral settings of the RunComfy operators, sensor and triggers.",
                "options": {
                    "poll_rate_per_s": {
                        "description": "Most status/result polls per second across all RunComfy "
                        "triggers of one triggerer; when many jobs wait, each job's poll interval "
                        "stretches instead of the event loop falling over. 400 costs about 0.4 of a "
                        "core (about 1 ms of CPU a poll through the aiohttp transport); with "
                        "poll_transport = httpx (about 3 ms a poll) use about 150. Per triggerer: "
                        "divide RunComfy's rate limit by the number of triggerers.",
                        "version_added": "0.1.0",
                        "type": "float",
                        "example": "150",
                        "default": "400",
                    },
                    "poll_max_in_flight": {
                        "description": "Most RunComfy polls in flight at once per triggerer.",
                        "version_added": "0.1.0",
                        "type": "integer",
                        "example": "32",
                        "default": "32",
                    },
                    "poll_queue_max_s": {
                        "description": "Longest sleep, in seconds, of a queued job whose wait the "
                        "triggerer predicts from RunComfy's queue_position and how fast the queue was "
                        "seen to drain. 0 turns prediction off: every job then polls by backoff, "
                        "capped by poll_max_interval.",
                        "version_added": "0.2.0",
                        "type": "float",
                        "example": "0",
                        "default": "300",
                    },
                    "poll_transport": {
                        "description": "HTTP transport of the status/result GETs on an event loop: "
                        "aiohttp (httpx-aiohttp, about a third of the CPU per poll) or httpx (httpx's own). "
                        "Submit and cancel POSTs always use httpx's own transport, which tells a "
                        "failure before sending from one after. Behind a proxy from the environment "
                        "GETs use httpx's transport regardless.",
                        "version_added": "0.2.0",
                        "type": "string",
                        "example": "httpx",
                        "default": "aiohttp",
                    },
                    "wait_before_defer_s": {
                        "description": "Seconds a task keeps polling on the worker after submitting "
                        "before it defers. A job that finishes in this window never defers, so "
                        "Airflow's defer-exit race cannot fail it; longer jobs cost this many "
                        "worker-slot seconds. 0 polls once, then defers.",
                        "version_added": "0.2.0",
                        "type": "float",
                        "example": "10",
                        "default": "10",
                    },
                    "min_deferral_s": {
                        "description": "Seconds after a deferral began before a RunComfy trigger may "
                        "fire. The scheduler must first drain the executor event of the worker's exit "
                        "after defer(); a trigger that fires sooner can make it fail or retry a task "
                        "whose job succeeded (apache/airflow#67287, #71580). Adds at most this much "
                        "latency to jobs that finish just after deferring.",
                        "version_added": "0.2.0",
                        "type": "float",
                        "example": "15",
                        "default": "15",
                    },
                },
            }
        },
        "connection-types": [
            {
                "connection-type": "runcomfy",
                "hook-class-name": f"{PACKAGE}.hooks.runcomfy.RunComfyHook",
                "hook-name": "RunComfy",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port", "login"],
                    "relabeling": {"password": "API Token", "host": "Base URL"},
                    "placeholders": {
                        "host": "https://model-api.runcomfy.net (default)",
                        "password": "RunComfy API token (Profile page)",
                    },
                },
                "conn-fields": {
                    "allow_insecure_inputs": {
                        "label": "Allow http:// input URLs",
                        "description": "Only for the emulator and local S3 on loopback.",
                        "schema": {"type": ["boolean", "null"], "default": False},
                    },
                    "connect_timeout_s": {
                        "label": "Connect timeout (s)",
                        "schema": {"type": ["number", "null"], "default": 10},
                    },
                    "read_timeout_s": {
                        "label": "Read timeout (s)",
                        "schema": {"type": ["number", "null"], "default": 30},
                    },
                    "max_retries": {
                        "label": "Max retries per call",
                        "description": "Retries of idempotent calls on 429/5xx/connection errors.",
                        "schema": {"type": ["integer", "null"], "default": 4},
                    },
                    "verify_tls": {
                        "label": "Verify TLS certificates",
                        "schema": {"type": ["boolean", "null"], "default": True},
                    },
                    "retry_max_wait_s": {
                        "label": "Longest wait between retries (s)",
                        "description": "Cap of the jittered backoff and of a server's Retry-After.",
                        "schema": {"type": ["number", "null"], "default": 30},
                    },
                    "retry_total_s": {
                        "label": "Retry budget per call (s)",
                        "description": "No retry starts after this much time spent on one call.",
                        "schema": {"type": ["number", "null"], "default": 120},
                    },
                    "output_hosts": {
                        "label": "Extra output hosts",
                        "description": "Comma-separated hosts (or *.suffix) outputs may be downloaded from, "
                        "besides the API host and *.runcomfy.net / *.runcomfy.com.",
                        "schema": {"type": ["string", "null"]},
                    },
                    "balance_url": {
                        "label": "Balance API base URL",
                        "description": "Where GET /balance answers with balance_usd (RunComfy's core API, not "
                        "the Model API); https unless allow_insecure_inputs. Empty: budget pre-flights skip the balance check.",
                        "schema": {"type": ["string", "null"]},
                    },
                },
            }
        ],
    }
