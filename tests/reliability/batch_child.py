"""A batch trigger in a process of its own, for a test to SIGKILL after POSTs left.

``python -m tests.reliability.batch_child '<trigger kwargs JSON>'``: runs the trigger; every submit
prints ``POSTED <request id>`` once RunComfy has answered, then hangs, so the kill lands between the
answer and the moment it is recorded. Connections come from the environment, as in a triggerer.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from airflow_provider_nanobanana.hooks.runcomfy import RunComfyHook
from airflow_provider_nanobanana.triggers.batch import RunComfyBatchTrigger


async def main(kwargs: dict[str, Any]) -> None:
    real_submit = RunComfyHook.asubmit

    async def submit_then_hang(self: RunComfyHook, request: Any) -> Any:
        response = await real_submit(self, request)
        print(f"POSTED {response.request_id}", flush=True)
        await asyncio.sleep(3600)
        return response

    RunComfyHook.asubmit = submit_then_hang  # type: ignore[method-assign]
    async for _event in RunComfyBatchTrigger(**kwargs).run():
        return


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
