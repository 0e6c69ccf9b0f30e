"""Run outputs: Parquet tables rewritten atomically after every round, plus config and versions.

Every file is written to a temporary name in the same directory and moved into place with ``os.replace``,
so a reader (or a crash) never sees half a file. Schema: docs/results.md.
"""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from fedspine_ray.config import ExperimentConfig
from fedspine_ray.launch.files import atomic_write, atomic_write_text

ROUNDS_FILE = "rounds.parquet"
CLIENTS_FILE = "clients.parquet"
CONFIG_FILE = "config.yaml"
VERSIONS_FILE = "versions.json"
SUMMARY_FILE = "summary.json"
TRACKED_PACKAGES = ("fedspine-ray", "torch", "ray", "transformers", "peft", "deepspeed", "pandas", "pyarrow")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in TRACKED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


class ResultsWriter:
    """Accumulates per-round and per-client rows and keeps the Parquet files on disk current."""

    def __init__(self, output_dir: Path, config: ExperimentConfig, resume_after: int | None = None) -> None:
        """``resume_after``: a resumed run keeps the rows of rounds ``<= resume_after`` already on disk and
        drops later ones (written after the checkpoint it resumes from, before the crash)."""
        self.output_dir = Path(output_dir)
        self.round_rows: list[dict[str, Any]] = []
        self.client_rows: list[dict[str, Any]] = []
        if resume_after is not None:
            self.round_rows = _rows_up_to(self.output_dir / ROUNDS_FILE, resume_after)
            self.client_rows = _rows_up_to(self.output_dir / CLIENTS_FILE, resume_after)
        self.write_config(config)
        atomic_write_text(self.output_dir / VERSIONS_FILE, json.dumps(library_versions(), indent=2))

    def write_config(self, config: ExperimentConfig) -> None:
        """``config.yaml``: the run's effective config (again once set-up resolved a derived value)."""
        atomic_write_text(self.output_dir / CONFIG_FILE, yaml.safe_dump(config.to_dict(), sort_keys=False))

    def add_round(self, round_row: dict[str, Any], client_rows: list[dict[str, Any]]) -> None:
        self.round_rows.append(round_row)
        self.client_rows.extend(client_rows)
        self._write_table(ROUNDS_FILE, self.round_rows)
        self._write_table(CLIENTS_FILE, self.client_rows)

    def _write_table(self, name: str, rows: list[dict[str, Any]]) -> None:
        frame = pd.DataFrame(rows)
        atomic_write(self.output_dir / name, lambda tmp: frame.to_parquet(tmp, index=False))

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_text(self.output_dir / SUMMARY_FILE, json.dumps(summary, indent=2, default=str))

    def rounds(self) -> pd.DataFrame:
        return pd.DataFrame(self.round_rows)

    def clients(self) -> pd.DataFrame:
        return pd.DataFrame(self.client_rows)


def _rows_up_to(path: Path, last_round: int) -> list[dict[str, Any]]:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: missing, cannot resume the run; fix: start it again without --resume"
        )
    frame = pd.read_parquet(path)
    if frame.empty:
        return []
    return frame[frame["round"] <= last_round].to_dict("records")


def read_run(output_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Load a run's ``(rounds, clients)`` tables."""
    output_dir = Path(output_dir)
    return pd.read_parquet(output_dir / ROUNDS_FILE), pd.read_parquet(output_dir / CLIENTS_FILE)
