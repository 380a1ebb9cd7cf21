"""Release checks: build the sdist and wheel, check their metadata, install the wheel into a fresh venv.

The build uses build isolation with uv as the installer (``python -m build --installer uv``), so the
build backend (hatchling) comes from uv's cache or the package registry; the fresh venv resolves
apache-airflow the same way. With a warm uv cache the whole module takes about 15 s.
"""

from __future__ import annotations

import email.parser
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from configparser import ConfigParser
from pathlib import Path

import pytest

import airflow_provider_nanobanana

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "airflow_provider_nanobanana"
DIST_NAME = "airflow-provider-nanobanana"
VERSION = airflow_provider_nanobanana.__version__


def _uv() -> str:
    uv = os.environ.get("UV") or shutil.which("uv") or shutil.which("uv", path=str(ROOT / ".tools" / "bin"))
    if not uv:
        pytest.fail("uv is not available: run the suite through `make test`, which installs it")
    return uv


def _run(
    args: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 300
) -> str:
    done = subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd, check=False
    )
    assert done.returncode == 0, f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dist")
    uv = _uv()
    env = {**os.environ, "PATH": f"{Path(uv).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    _run(
        [
            sys.executable,
            "-m",
            "build",
            "--installer",
            "uv",
            "--sdist",
            "--wheel",
            "--outdir",
            str(out),
            str(ROOT),
        ],
        env=env,
    )
    wheels, sdists = list(out.glob("*.whl")), list(out.glob("*.tar.gz"))
    assert len(wheels) == 1, wheels
    assert len(sdists) == 1, sdists
    return {"wheel": wheels[0], "sdist": sdists[0]}


@pytest.fixture(scope="module")
def wheel_names(dists: dict[str, Path]) -> list[str]:
    with zipfile.ZipFile(dists["wheel"]) as wheel:
        return wheel.namelist()


def _wheel_text(dists: dict[str, Path], name: str) -> str:
    with zipfile.ZipFile(dists["wheel"]) as wheel:
        return wheel.read(f"{PACKAGE}-{VERSION}.dist-info/{name}").decode()


def test_file_names_carry_the_single_sourced_version(dists: dict[str, Path]) -> None:
    assert dists["wheel"].name == f"{PACKAGE}-{VERSION}-py3-none-any.whl"
    assert dists["sdist"].name == f"{PACKAGE}-{VERSION}.tar.gz"


def test_twine_check_passes(dists: dict[str, Path]) -> None:
    out = _run([sys.executable, "-m", "twine", "check", "--strict", str(dists["wheel"]), str(dists["sdist"])])
    assert out.count("PASSED") == 2, out


def test_wheel_metadata(dists: dict[str, Path]) -> None:
    meta = email.parser.Parser().parsestr(_wheel_text(dists, "METADATA"))
    assert meta["Name"] == DIST_NAME
    assert meta["Version"] == VERSION
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta.get_all("License-File") == ["LICENSE"]
    classifiers = meta.get_all("Classifier") or []
    assert "Framework :: Apache Airflow" in classifiers
    assert "Framework :: Apache Airflow :: Provider" in classifiers
    assert meta["Requires-Python"] == ">=3.10"
    requires = meta.get_all("Requires-Dist") or []
    assert any(r.startswith("apache-airflow") and ">=3.1.8" in r for r in requires), requires
    assert meta["Description-Content-Type"] == "text/markdown"


def test_wheel_entry_points(dists: dict[str, Path]) -> None:
    entry_points = ConfigParser()
    entry_points.read_string(_wheel_text(dists, "entry_points.txt"))
    assert dict(entry_points["apache_airflow_provider"]) == {
        "provider_info": f"{PACKAGE}.get_provider_info:get_provider_info"
    }
    assert entry_points["console_scripts"]["runcomfy-emulator"] == f"{PACKAGE}.emulator.__main__:main"


def test_wheel_contents(wheel_names: list[str]) -> None:
    assert f"{PACKAGE}/py.typed" in wheel_names
    assert f"{PACKAGE}-{VERSION}.dist-info/licenses/LICENSE" in wheel_names
    for module in ("emulator/__main__.py", "emulator/app.py", "hooks/runcomfy.py", "get_provider_info.py"):
        assert f"{PACKAGE}/{module}" in wheel_names
    top_level = {name.split("/", 1)[0] for name in wheel_names}
    assert top_level == {PACKAGE, f"{PACKAGE}-{VERSION}.dist-info"}, top_level  # no tests/devstack/benchmarks


def test_sdist_contents(dists: dict[str, Path]) -> None:
    with tarfile.open(dists["sdist"]) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    for required in ("pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md", f"{PACKAGE}/py.typed"):
        assert required in names, required
    assert not any(name.startswith(("devstack/", "benchmarks/", ".venv")) for name in names)


def test_wheel_installs_and_airflow_lists_the_provider(dists: dict[str, Path], tmp_path: Path) -> None:
    """A fresh venv with only the wheel (and what it resolves): Airflow must discover the provider."""
    uv = _uv()
    venv = tmp_path / "venv"
    _run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "VIRTUAL_ENV", "UV_PROJECT"))}
    _run(
        [uv, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), str(dists["wheel"])],
        env=env,
    )
    python = str(venv / "bin" / "python")
    out = _run(
        [
            python,
            "-c",
            "import airflow_provider_nanobanana as p; "
            "from airflow_provider_nanobanana.get_provider_info import get_provider_info; "
            "info = get_provider_info(); "
            "print(p.__version__, info['package-name'], info['connection-types'][0]['connection-type'], "
            "p.__file__)",
        ],
        env=env,
        cwd=tmp_path,  # not the checkout: ``python -c`` would import the source tree instead
    )
    version, name, conn_type, location = out.split()
    assert (version, name, conn_type) == (VERSION, DIST_NAME, "runcomfy")
    assert location.startswith(str(venv)), "imported the package from outside the fresh venv"
    airflow_env = {
        **env,
        "AIRFLOW_HOME": str(tmp_path / "airflow-home"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }
    listed = _run(
        [str(venv / "bin" / "airflow"), "providers", "list", "-o", "plain"], env=airflow_env, cwd=tmp_path
    )
    assert DIST_NAME in listed, listed
