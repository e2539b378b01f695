"""Run tags: data fingerprint, git commit, package versions."""

import os
import subprocess

from recsys_mtl.tracking.provenance import data_fingerprint, git_commit, package_versions, run_tags


def test_data_fingerprint_changes_when_a_file_is_touched_resized_or_added(tmp_path):
    (tmp_path / "part-0.parquet").write_bytes(b"x" * 10)
    first = data_fingerprint([tmp_path])
    assert data_fingerprint([tmp_path]) == first
    st = (tmp_path / "part-0.parquet").stat()
    os.utime(tmp_path / "part-0.parquet", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    touched = data_fingerprint([tmp_path])
    (tmp_path / "part-1.parquet").write_bytes(b"y")
    added = data_fingerprint([tmp_path])
    assert len({first, touched, added}) == 3 and added.endswith(":2files")


def test_git_commit_reads_head_and_dirty_state(tmp_path):
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "a.txt").write_text("1")
    subprocess.run(["git", "-C", str(tmp_path), "add", "a.txt"], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "commit", "-qm", "c"], check=True, env=env)
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert git_commit(tmp_path) == (head, False)
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("2")
    assert git_commit(tmp_path / "sub") == (head, True)  # the repository holding the folder, now dirty
    outside = tmp_path.parent / f"{tmp_path.name}-not-a-repo"
    outside.mkdir()
    assert git_commit(outside) is None


def test_run_tags_name_commit_data_and_every_tracked_package(tmp_path):
    (tmp_path / "d.parquet").write_bytes(b"1")
    tags = run_tags([tmp_path / "d.parquet"])
    assert tags["data.fingerprint"].startswith("sha256:")
    import mlflow
    import pyarrow
    import torch

    for pkg in ("torch", "torchrec", "fbgemm_gpu", "pyarrow", "mlflow", "recsys_mtl"):
        assert tags[f"version.{pkg}"] == package_versions()[pkg]
    assert (tags["version.torch"], tags["version.pyarrow"], tags["version.mlflow"]) == \
        (torch.__version__, pyarrow.__version__, mlflow.__version__)  # what is installed, not a constant
    assert package_versions(["no_such_package_xyz"]) == {"no_such_package_xyz": "not installed"}
