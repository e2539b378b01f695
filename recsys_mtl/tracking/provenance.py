"""Run tags that say what produced a run: git commit, data fingerprint, package versions."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import subprocess
from pathlib import Path
from typing import Iterable

#: packages whose versions are tagged on every run (missing ones are tagged "not installed")
TRACKED_PACKAGES = ("torch", "torchrec", "fbgemm_gpu", "pyarrow", "mlflow", "recsys_mtl")
_DIST_NAMES = {"fbgemm_gpu": ("fbgemm-gpu", "fbgemm-gpu-cpu"), "recsys_mtl": ("recsys-mtl",),
               "mlflow": ("mlflow", "mlflow-skinny")}


def git_commit(repo_dir: str | Path | None = None) -> tuple[str, bool] | None:
    """(commit sha, working tree dirty) of the repository holding `repo_dir` (default: this package), or None."""
    cwd = Path(repo_dir) if repo_dir is not None else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return sha.stdout.strip(), bool(status.stdout.strip())


def data_fingerprint(paths: Iterable[str | Path]) -> str:
    """sha256 over (path, size, mtime_ns) of every file under `paths` (directories are walked, sorted).

    Cheap (no file is read) and changes whenever a file is added, removed, rewritten or touched.
    """
    entries: list[str] = []
    for p in paths:
        p = Path(p).resolve()
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        for f in files:
            try:
                st = f.stat()
                entries.append(f"{f}\t{st.st_size}\t{st.st_mtime_ns}")
            except FileNotFoundError:
                entries.append(f"{f}\tmissing")
    digest = hashlib.sha256("\n".join(entries).encode()).hexdigest()
    return f"sha256:{digest[:32]}:{len(entries)}files"


def package_versions(packages: Iterable[str] = TRACKED_PACKAGES) -> dict[str, str]:
    out = {}
    for name in packages:
        version = "not installed"
        for dist in _DIST_NAMES.get(name, (name,)):
            try:
                version = importlib.metadata.version(dist)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
        if version == "not installed" and name == "recsys_mtl":
            import recsys_mtl

            version = recsys_mtl.__version__
        out[name] = version
    return out


def run_tags(data_paths: Iterable[str | Path] = (), repo_dir: str | Path | None = None) -> dict[str, str]:
    """Tags for a training run: `git.commit`, `git.dirty` (and MLflow's own `mlflow.source.git.commit`),
    `data.fingerprint`, `data.paths`, `version.<package>`, `host`."""
    tags: dict[str, str] = {}
    commit = git_commit(repo_dir)
    if commit is not None:
        tags["git.commit"], dirty = commit
        tags["git.dirty"] = str(dirty).lower()
        tags["mlflow.source.git.commit"] = commit[0]
    data_paths = [str(p) for p in data_paths]
    if data_paths:
        tags["data.fingerprint"] = data_fingerprint(data_paths)
        tags["data.paths"] = ",".join(data_paths)[:4000]
    for name, version in package_versions().items():
        tags[f"version.{name}"] = version
    tags["host"] = os.uname().nodename
    return tags
