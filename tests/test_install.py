"""``fedspine report`` from an installed wheel, outside the checkout (issue 25): the wheel carries the
``analysis`` package next to ``fedspine_ray``, and the installed ``fedspine`` command runs it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def _source_copy(target: Path) -> Path:
    """What the wheel is built from, copied out so the build leaves nothing (build/, egg-info) in the checkout."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("fedspine_ray", "analysis"):
        shutil.copytree(REPO / name, target / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, target / name)
    return target


def test_fedspine_report_runs_from_an_installed_wheel_outside_the_checkout(tmp_path):
    source = _source_copy(tmp_path / "src")
    wheels = tmp_path / "wheels"
    build = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(wheels),
    ]
    subprocess.run([*build, str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("fedspine_ray-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"analysis/__init__.py", "analysis/report.py", "analysis/stats.py"} <= set(names)
    site = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)]
    subprocess.run(install, check=True, capture_output=True, timeout=300)

    run = tmp_path / "runs" / "fedit-0"  # a run directory as the runtime writes one (its two tables)
    run.mkdir(parents=True)
    pd.DataFrame(
        {
            "round": [0, 1, 2],
            "method": "fedit",
            "test_accuracy": [0.4, 0.55, 0.6],
            "sim_time_s": [0.0, 10.0, 20.0],
            "wall_time_s": [1.0, 2.0, 3.0],
            "bytes_down": [0, 10, 10],
            "bytes_up": [0, 1, 1],
            "total_params": [100, 100, 100],
        }
    ).to_parquet(run / "rounds.parquet", index=False)
    elsewhere = tmp_path / "elsewhere"  # not the checkout: only the installed copy can be imported
    elsewhere.mkdir()
    code = (
        "import sys, analysis; from fedspine_ray.cli import main\n"
        "print('analysis from', analysis.__file__)\n"
        "sys.exit(main(['report', sys.argv[1], '--out', sys.argv[2], '--no-plots']))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run(
        [sys.executable, "-c", code, str(run), str(tmp_path / "report")],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"analysis from {site}" in done.stdout
    assert (tmp_path / "report" / "report.md").is_file() and (tmp_path / "report" / "summary.json").is_file()
