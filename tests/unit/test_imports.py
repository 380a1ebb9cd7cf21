"""Importing the provider uses only current Airflow 3 paths: no deprecation warning comes from us."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import airflow_provider_nanobanana

SCRIPT = """
import json, warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    from airflow_provider_nanobanana.get_provider_info import get_provider_info
    import importlib
    info = get_provider_info()
    for section in ("hooks", "operators", "sensors", "triggers"):
        for entry in info[section]:
            for module in entry["python-modules"]:
                importlib.import_module(module)
print(json.dumps([[str(w.category.__name__), w.filename, str(w.message)] for w in caught]))
"""


def test_no_deprecation_warnings_originate_in_the_provider():
    package_dir = str(Path(airflow_provider_nanobanana.__file__).parent)
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, timeout=120
    )
    warnings = json.loads(out.stdout.strip().splitlines()[-1])
    ours = [w for w in warnings if w[1].startswith(package_dir) and "Deprecat" in w[0]]
    assert ours == []
