"""Put on ``PYTHONPATH`` with ``NB_SLOW_STEPS`` set to time every event-loop step (``benchmarks/slow_steps.py``)."""

import os

if os.environ.get("NB_SLOW_STEPS"):
    from benchmarks.slow_steps import install

    install(os.environ["NB_SLOW_STEPS"])
