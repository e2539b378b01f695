"""Benchmarks: each prints figures measured side by side in one run (no hard-coded results)."""

from pathlib import Path

#: the repository's configs/, so the default configs are found from any working directory
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
