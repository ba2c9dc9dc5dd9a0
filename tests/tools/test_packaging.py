"""The wheel: the library and its static files in, the reference service out; the CLI's help
with the kernel alone; the reference service's absence said plainly.

The wheel is built (`pip wheel --no-deps`, setuptools fetched by pip's build isolation) from a
copy of the sources, so no stale `build/` directory can leak into it, then unpacked: a pure
Python wheel unpacked on the path is what `pip install` makes of it, minus the dependencies,
which come from this environment.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "actors", "messages", "examples")

# Runs before anything else in the child: the `http` extra's packages cannot be imported.
BLOCK_HTTP_EXTRA = """
import sys
class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("starlette", "hypercorn", "prometheus_client"):
            raise ImportError(f"No module named {name!r} (blocked: the http extra is absent)")
sys.meta_path.insert(0, Blocked())
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, src / name)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out),
                    str(src)], check=True, capture_output=True, timeout=300)
    (built,) = out.glob("*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("site")
    zipfile.ZipFile(wheel).extractall(site)
    return site


def run(site: Path, code: str, cwd: Path) -> subprocess.CompletedProcess:
    """`code` in a child that sees the unpacked wheel first and never this checkout."""
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env={"PYTHONPATH": str(site),
                          "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=60)


def test_packaging_wheel_is_named_trio_triage_with_static_files_and_no_example(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert wheel.name.startswith("trio_triage-")
    assert {"actors/http/static/dashboard.html", "actors/http/static/dashboard.js",
            "actors/http/static/uPlot.iife.min.js"} <= set(names)
    assert [n for n in names if n.startswith("examples/") or "vet_tracker" in n] == []
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "triage = actors.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_packaging_wheel_metadata_keeps_http_and_embedded_out_of_the_kernel(wheel):
    zf = zipfile.ZipFile(wheel)
    meta = zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    required = [line for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    kernel = [r.split()[1].split("[")[0].split(">")[0].split("<")[0] for r in required
              if "extra ==" not in r]
    assert sorted(kernel) == ["ddsketch", "httpx", "loguru", "msgspec", "psycopg", "trio"]
    for extra, dep in (("http", "starlette"), ("http", "hypercorn"),
                       ("http", "prometheus_client"), ("embedded", "pgserver")):
        assert any(dep in r and f'extra == "{extra}"' in r for r in required), (extra, dep)


def test_packaging_cli_help_works_without_the_http_extra(installed, tmp_path):
    code = BLOCK_HTTP_EXTRA + (
        "import actors.cli\n"
        "assert actors.cli.__file__.startswith(sys.path[0]), actors.cli.__file__\n"
        "try:\n    actors.cli.main(['serve', '--help'])\nexcept SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "import starlette\n")
    done = run(installed, code, tmp_path)
    assert "--app MODULE:FACTORY" in done.stdout, done.stderr
    assert "blocked: the http extra is absent" in done.stderr  # the blocker did block


def test_packaging_public_names_import_from_the_wheel(installed, tmp_path):
    done = run(installed, "from actors import open_monitoring, Config, Priority, CircuitOpen\n"
                          "print(CircuitOpen.__module__, open_monitoring.__module__)", tmp_path)
    assert done.stdout.split() == ["actors", "actors.system"], done.stderr


def test_packaging_serve_from_a_wheel_asks_for_app_without_the_example(installed, tmp_path):
    code = ("import os, sys\nos.environ['DATABASE_URL'] = 'postgresql://u@127.0.0.1:1/db'\n"
            "from actors.cli import main\nsys.exit(main(['serve']))")
    done = run(installed, code, tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "--app" in done.stderr and "checkout" in done.stderr
    assert "Traceback" not in done.stderr
