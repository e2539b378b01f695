"""A model is verified against the SHA-256 manifest logged with it before anything of it is loaded from a store
(issue 21, item 7): a changed file, or a crafted DCP .metadata pickle with a manifest rewritten to match, is
refused in one line before torch opens it; checkpoint payloads are JSON tensors, not pickles."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from recsys_mtl.cli import main
from recsys_mtl.tracking.model_manifest import MANIFEST_TAG, file_sha256
from tests.tracking.test_tracked_training import train_in_process


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from recsys_mtl.data.synthetic import SynthConfig, generate_synthetic
    from recsys_mtl.demo import split_last_day

    root = generate_synthetic(tmp_path_factory.mktemp("manifest") / "data",
                              SynthConfig(tasks=2, rows=768, days=3, seed=4, rows_per_file=256, row_group_size=128,
                                          table_scale=0.0005))
    split_last_day(root)
    return root


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    root = tmp_path_factory.mktemp("manifest-store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    run_id = train_in_process(data, root / "run", uri, root / "artifacts", "train.epochs=1", register="manifest-mtl")
    client = MlflowClient(uri)
    model_dir = Path(client.get_run(run_id).info.artifact_uri.removeprefix("file://")) / "model"
    return {"uri": uri, "run_id": run_id, "model_dir": model_dir, "client": client}


@pytest.fixture
def logged(trained, tmp_path):
    """The module's logged model, put back as it was after each test that tampers with it."""
    import shutil

    shutil.copytree(trained["model_dir"], tmp_path / "model-copy")
    yield trained
    shutil.rmtree(trained["model_dir"])
    shutil.copytree(tmp_path / "model-copy", trained["model_dir"])


class _Marker:
    """Unpickling this creates a file: what a crafted .metadata could do instead."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def evaluate_line(ref: str, data: Path, uri: str, capsys) -> tuple[int, str]:
    code = main(["evaluate", "--run", ref, "--data", str(data / "eval"), "--tracking-uri", uri, "--no-log"])
    return code, capsys.readouterr().err.strip().splitlines()[-1] if code else ""


def test_a_logged_model_carries_a_manifest_whose_hash_the_run_records_and_evaluates(logged, data, capsys):
    manifest = logged["model_dir"] / "manifest.json"
    files = json.loads(manifest.read_text())["files"]
    assert "config.yaml" in files and any(f.endswith("/.metadata") for f in files)
    assert logged["client"].get_run(logged["run_id"]).data.tags[MANIFEST_TAG] == file_sha256(manifest)
    assert evaluate_line(logged["run_id"], data, logged["uri"], capsys) == (0, "")


def test_a_changed_model_file_is_refused_in_one_line(logged, data, capsys):
    weights = next(logged["model_dir"].glob("checkpoint/step-*/*.distcp"))
    with open(weights, "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))  # one bit, as a damaged copy or an edited table
    code, line = evaluate_line("models:/manifest-mtl/1", data, logged["uri"], capsys)
    assert code == 2
    rel = weights.relative_to(logged["model_dir"]).as_posix()
    assert line == (f"recsys-mtl: error: models:/manifest-mtl/1: {rel} does not match its SHA-256 in the manifest; the "
                    "model in the artifact store was changed or damaged since it was logged: not loaded (log it again "
                    "from its training run)")


def test_a_crafted_metadata_pickle_with_a_matching_manifest_is_refused_before_it_is_unpickled(logged, data, tmp_path,
                                                                                             capsys):
    from recsys_mtl.tracking.model_manifest import manifest_of

    marker = tmp_path / "code-ran"
    metadata = next(logged["model_dir"].glob("checkpoint/step-*/.metadata"))
    metadata.write_bytes(pickle.dumps(_Marker(str(marker))))
    files = {p.relative_to(logged["model_dir"]).as_posix(): p for p in logged["model_dir"].rglob("*")
             if p.is_file() and p.name != "manifest.json"}
    (logged["model_dir"] / "manifest.json").write_text(json.dumps({"files": manifest_of(files)}))  # made to match
    code, line = evaluate_line(logged["run_id"], data, logged["uri"], capsys)
    assert code == 2 and not marker.exists()
    assert line.startswith(f"recsys-mtl: error: {logged['run_id']}: {logged['model_dir'] / 'manifest.json'} is not the "
                           f"manifest recorded with the run (tag {MANIFEST_TAG})")


def test_checkpoint_payloads_are_tensors_of_json_and_an_older_pickled_one_still_resumes(tmp_path, caplog):
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    from recsys_mtl.train import Trainer
    from recsys_mtl.train.checkpoint import METRICS_KEY, RNG_KEY, unpack
    from tests.models.batches import ListSource, rank_batches, tiny_spec
    from tests.train.helpers import tiny_config

    spec = tiny_spec()
    batches = rank_batches(spec, 4, 16, 1, 0)
    part = Trainer(tiny_config(tmp_path / "part", train={"epochs": 2, "max_steps": 3}), spec=spec,
                   train_data=ListSource(batches))
    part.fit()
    path = part.checkpoints.latest()
    saved = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    for key in ("train_state", RNG_KEY, METRICS_KEY):
        assert isinstance(saved[key], TensorStorageMetadata), key  # no pickled bytes item
    # the layout of checkpoints written before JSON payloads: pickled bytes
    state = part._checkpoint_state()
    part.checkpoints.load(path, state, part.signature)
    for key in ("train_state", RNG_KEY, METRICS_KEY):
        state[key] = pickle.dumps(unpack(state[key]))
    part.checkpoints.save(3, state, part.signature)
    with caplog.at_level("WARNING", logger="recsys_mtl.train.checkpoint"):
        resumed = Trainer(tiny_config(tmp_path / "part", train={"epochs": 2}), spec=spec, train_data=ListSource(batches))
        resumed.fit()
    assert "in the pickled format of recsys-mtl before JSON payloads" in caplog.text
    Trainer(tiny_config(tmp_path / "full", train={"epochs": 2}), spec=spec, train_data=ListSource(batches)).fit()
    assert (tmp_path / "part" / "train_log.jsonl").read_text() == (tmp_path / "full" / "train_log.jsonl").read_text()


def test_packed_payloads_round_trip_rng_states_and_refuse_object_arrays():
    import random

    import numpy as np
    import torch

    from recsys_mtl.train.checkpoint import pack, rng_state, unpack

    state = rng_state()
    back = unpack(pack(state))
    assert torch.equal(back["torch"], state["torch"]) and back["python"] == state["python"]
    assert back["numpy"][0] == state["numpy"][0] and np.array_equal(back["numpy"][1], state["numpy"][1])
    random.setstate(back["python"])  # the exact types the setters want
    np.random.set_state(back["numpy"])
    crafted = pack({"x": 1}).numpy().tobytes().replace(b'{"x":1}', b'{"x":{"__ndarray__":"|O","shape":[1],"data":""}}')
    with pytest.raises(ValueError, match="an object array is not data"):
        unpack(crafted)
