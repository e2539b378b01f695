"""Shared fixtures: small real datasets written once per session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# Without CUDA, Triton kernels (the fused GO4Align step) are tested in Triton's interpreter, which is
# chosen when triton is imported; nothing runs a Triton kernel on the CPU otherwise.
if not torch.cuda.is_available() and "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def kuairand_source() -> Path:
    return Path(os.environ.get("RECSYS_MTL_KUAIRAND", REPO.parent / "shared" / "data" / "kuairand"))


@pytest.fixture(scope="session")
def synth_small(tmp_path_factory) -> Path:
    """8 tasks, 3 days, 24k rows in files of 4 row groups of 2048 rows; tiny tables."""
    from recsys_mtl.data.synthetic import SynthConfig, generate_synthetic

    cfg = SynthConfig(tasks=8, rows=24_000, days=3, seed=7, rows_per_file=8192, row_group_size=2048, table_scale=0.001)
    return generate_synthetic(tmp_path_factory.mktemp("synth") / "data", cfg)


@pytest.fixture(scope="session")
def kuairand_dir(tmp_path_factory) -> Path:
    from recsys_mtl.data.kuairand import convert_kuairand

    src = kuairand_source()
    if not (src / "kuairand27k_standard_kcore15_likehate.tsv").exists():
        pytest.skip(f"KuaiRand subset not found at {src} (set RECSYS_MTL_KUAIRAND)")
    return convert_kuairand(src, tmp_path_factory.mktemp("kuairand") / "kr")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def kuairand_src() -> Path:
    return kuairand_source()


def _logging_state():
    import logging

    root = logging.getLogger()
    loggers = {name: (lg.level, lg.propagate, lg.disabled, list(lg.handlers))
               for name, lg in logging.Logger.manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    return list(root.handlers), root.level, loggers


def _restore(state) -> None:
    import logging

    handlers, level, loggers = state
    root = logging.getLogger()
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, lg in list(logging.Logger.manager.loggerDict.items()):
        if isinstance(lg, logging.Logger):
            lvl, propagate, disabled, hs = loggers.get(name, (logging.NOTSET, True, False, []))
            lg.setLevel(lvl)
            lg.propagate, lg.disabled = propagate, disabled
            lg.handlers[:] = hs


# CLI entry points and experiment runners called in-process set logger levels, handlers and
# propagation for a command-line run; undo that after each test and each module (module-scoped
# fixtures run before function-scoped ones), so later tests see the defaults.
@pytest.fixture(autouse=True, scope="module")
def _restore_logging_per_module():
    state = _logging_state()
    yield
    _restore(state)


@pytest.fixture(autouse=True)
def _restore_logging():
    state = _logging_state()
    yield
    _restore(state)


def _mount(*args: str) -> bool:
    import subprocess

    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture
def read_only():
    """make(folder): the folder, contents included, becomes unwritable for this process: a read-only bind mount
    as root (root ignores file modes), else mode 0o555 / 0o444. Undone after the test."""
    import stat

    mounted: list[Path] = []
    chmodded: list[tuple[Path, int]] = []

    def make(folder: Path) -> Path:
        if os.geteuid() == 0:
            if not (_mount("--bind", str(folder), str(folder))
                    and _mount("-o", "remount,bind,ro", str(folder), str(folder))):
                pytest.skip("running as root, and cannot mount a read-only folder here")
            mounted.append(folder)
            return folder
        for path in [folder, *folder.rglob("*")]:
            chmodded.append((path, stat.S_IMODE(path.stat().st_mode)))
            path.chmod(0o555 if path.is_dir() else 0o444)
        return folder

    yield make
    for folder in reversed(mounted):
        _mount_undo(folder)
    for path, mode in reversed(chmodded):
        path.chmod(mode)


def _mount_undo(folder: Path) -> None:
    import subprocess

    subprocess.run(["umount", str(folder)], capture_output=True)


@pytest.fixture
def small_filesystem(tmp_path):
    """make(bytes): a folder on a file system of that size (a tmpfs, as root), or None where none can be mounted."""
    mounted: list[Path] = []

    def make(size: int) -> Path | None:
        folder = tmp_path / f"small-fs-{len(mounted)}"
        folder.mkdir()
        if os.geteuid() != 0 or not _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)):
            return None
        mounted.append(folder)
        return folder

    yield make
    for folder in reversed(mounted):
        _mount_undo(folder)
