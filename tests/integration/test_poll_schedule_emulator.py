"""Queue-aware polling over real HTTP: status GETs per job counted at two emulators (issue #17).

Two emulators with the same queue (2 running slots, an accelerated clock); the same jobs deep in it,
watched by the real trigger with the queue model on one and off on the other. Assertions are on
what the emulators counted and what the model learnt, never on wall time.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from airflow_provider_nanobanana import queue_drain
from airflow_provider_nanobanana.emulator import EmulatorConfig, EmulatorServer
from airflow_provider_nanobanana.queue_drain import QueueDrain
from airflow_provider_nanobanana.triggers.runcomfy import RunComfyJobTrigger

SCALE = 100.0  # emulated seconds per real second
SLOTS, RUN_S, RUN_S_MAX = 5, 20.0, 30.0  # drains 5 per 25 emulated s = 20 positions per real second
FILLERS, WATCHED = 100, 4  # the watched jobs wait ~5 real s, 17x the longest backoff (0.3 s)
HOLD_S = 800.0  # 8 real seconds: the queue is all in before it moves


class QueueBlindTrigger(RunComfyJobTrigger):
    async def _wait(self, watch):  # type: ignore[no-untyped-def]
        watch.drain = None
        return await super()._wait(watch)


def _connection(monkeypatch: pytest.MonkeyPatch, conn_id: str, server: EmulatorServer) -> None:
    conn = {"conn_type": "runcomfy", "host": server.base_url, "password": server.token}
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({**conn, "extra": {"retry_max_wait_s": 0.05}})
    )


def _queue(server: EmulatorServer, png_url: str) -> list[str]:
    """FILLERS jobs nobody watches, then WATCHED jobs behind them; returns the watched ids."""
    body = {"prompt": "queued edit", "image_urls": [png_url]}
    headers = {"Authorization": f"Bearer {server.token}"}
    with httpx.Client(base_url=server.base_url, headers=headers) as client:
        ids = [
            client.post("/v1/models/google/nano-banana-2/edit", json=body)
            .raise_for_status()
            .json()["request_id"]
            for _ in range(FILLERS + WATCHED)
        ]
    return ids[FILLERS:]


@pytest.mark.slow
def test_queue_aware_triggers_poll_deep_queued_jobs_less_and_learn_the_queue(monkeypatch, presigned_input):
    # Nothing starts until HOLD_S emulated seconds after its submit; the triggers start then.
    config = EmulatorConfig(
        queue_s=HOLD_S, run_s=RUN_S, run_s_max=RUN_S_MAX, max_running=SLOTS, time_scale=SCALE, seed=3
    )
    with EmulatorServer(config) as aware_emu, EmulatorServer(config) as blind_emu:
        _connection(monkeypatch, "runcomfy_aware", aware_emu)
        _connection(monkeypatch, "runcomfy_blind", blind_emu)
        moves_at = time.time() + HOLD_S / SCALE
        aware_ids, blind_ids = _queue(aware_emu, presigned_input), _queue(blind_emu, presigned_input)
        if time.time() >= moves_at:  # a precondition of the set-up, not a claim about speed
            pytest.fail("the machine was too slow to fill the queue within the emulator's hold")
        deadline = time.time() + 120
        timing = {"poll_interval_s": 2.0 / SCALE, "poll_max_s": 30.0 / SCALE, "deadline_epoch_s": deadline}

        async def watch_all() -> tuple[list[dict], QueueDrain]:
            # The model's real-time constants on the accelerated clock; it starts untrained.
            drain = QueueDrain(max_wait_s=300 / SCALE, half_life_s=120 / SCALE, min_evidence_s=4 / SCALE)
            queue_drain._DRAINS[asyncio.get_running_loop()] = {"runcomfy_aware": drain}
            triggers = [
                RunComfyJobTrigger(request_id=r, runcomfy_conn_id="runcomfy_aware", **timing)
                for r in aware_ids
            ]
            triggers += [
                QueueBlindTrigger(request_id=r, runcomfy_conn_id="runcomfy_blind", **timing)
                for r in blind_ids
            ]

            async def first(trigger: RunComfyJobTrigger) -> dict:
                async for event in trigger.run():
                    return dict(event.payload)
                return {}

            await asyncio.sleep(moves_at - time.time())
            return await asyncio.gather(*(first(t) for t in triggers)), drain

        events, drain = asyncio.run(watch_all())
        assert [e["status"] for e in events] == ["success"] * (2 * WATCHED)
        aware_polls = aware_emu.counters()["status_polls"]
        blind_polls = blind_emu.counters()["status_polls"]

    # The same jobs cost about 15 status GETs each with the model, 23 without (jitter aside).
    assert aware_polls < 0.8 * blind_polls, (aware_polls, blind_polls)
    # What it learnt from the emulator's queue positions: ~20 positions per real second, runs of
    # 20-30 emulated seconds (0.2-0.3 s real).
    rate = drain.rate_per_s(time.time())
    assert rate is not None
    assert 20 / 3 < rate < 20 * 3
    assert drain.run_s is not None
    assert 0.1 < drain.run_s < 0.6
