"""What a data folder holds besides its Parquet files, under names that Parquet readers skip.

`pyarrow.dataset(DIR)`, `pandas.read_parquet(DIR)` and Spark skip files whose names start with `_` or `.`, and a
DuckDB-style glob (`DIR/**/*.parquet`) reads only Parquet files, so a folder that `recsys-mtl data synth` or
`recsys-mtl data kuairand` writes reads as plain Parquet in any of them:

    DIR/_feature_spec.yaml     the feature spec (data.spec: DIR/_feature_spec.yaml)
    DIR/_synthetic.json        the generator's settings (data synth)
    DIR/_README.md             where the data came from (data kuairand)
    DIR/_feature_spec_play_time.yaml   the spec with play time as a regression task (data kuairand)
    DIR/date=YYYY-MM-DD/...    Parquet (data synth), or DIR/train/date=..., DIR/test/date=... (data kuairand)

Folders written before this layout hold the same files without the `_`; `metadata_file` still finds them.
"""

from __future__ import annotations

from pathlib import Path

SPEC_FILE = "_feature_spec.yaml"
SYNTHETIC_FILE = "_synthetic.json"
README_FILE = "_README.md"


def metadata_file(folder: str | Path, name: str) -> Path:
    """`folder/_name` (`name` given with or without its `_`), or the file without the `_` if only that exists
    (a folder written before the `_` names)."""
    folder = Path(folder)
    current = folder / ("_" + name.removeprefix("_"))
    legacy = folder / name.removeprefix("_")
    return legacy if not current.exists() and legacy.exists() else current


def spec_file(folder: str | Path) -> Path:
    """The feature spec a data folder holds (which may not exist: the caller's load names it)."""
    return metadata_file(folder, SPEC_FILE)


__all__ = ["SPEC_FILE", "SYNTHETIC_FILE", "README_FILE", "metadata_file", "spec_file"]
