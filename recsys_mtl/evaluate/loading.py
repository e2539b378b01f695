"""Load a trained model back for scoring: one process, CPU, unsharded, from a DCP checkpoint.

A *model directory* (what a tracked run logs as its `model/` artifact) holds:

    config.yaml          the training config (model architecture, seed, ...)
    feature_spec.yaml    the feature spec the model was built from
    checkpoint/step-N/   the final DCP checkpoint, as saved by every training rank (model.json inside)

`load_model(path)` accepts a model directory, or a bare checkpoint directory
(`<output_dir>/checkpoints/step-N`, or `<output_dir>/checkpoints` for its latest), which holds
the resolved config and feature spec the trainer saved with it (a checkpoint older than that
needs the training config given separately). Tables sharded over any number of ranks
(table-, row-, column-wise) are read back into plain tensors by DCP's resharding load.
`resolve_model_dir` finds the model directory of an MLflow run id or a `models:/NAME/VERSION` or `models:/NAME@ALIAS` URI.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from urllib.parse import unquote, urlparse

# the files a checkpoint and a model directory carry
from recsys_mtl.train.checkpoint import CHECKPOINT_DIR, CHECKPOINTS_DIR, CONFIG_FILE, SPEC_FILE

log = logging.getLogger(__name__)

MODEL_ARTIFACT = "model"


@dataclasses.dataclass
class LoadedModel:
    model: "object"  # MultiTaskModel, eval mode, on CPU
    spec: "object"  # FeatureSpec
    config: "object"  # TrainConfig
    checkpoint: Path
    step: int | None  # training step of the checkpoint (from its folder name), if known
    source: str  # what was loaded, for reports and tags


def _checkpoint_in(path: Path) -> Path:
    """`path` itself if it is a complete DCP checkpoint, else the latest one under it."""
    from recsys_mtl.train.checkpoint import CheckpointManager

    if CheckpointManager.is_complete(path):
        return path
    latest = CheckpointManager(path).latest()
    if latest is None:
        hint = f" (a training run's output_dir? its checkpoints are in {path / CHECKPOINTS_DIR})" \
            if (path / CHECKPOINTS_DIR).is_dir() else ""
        raise FileNotFoundError(f"{path}: not a checkpoint directory (no .metadata and model.json) "
                                f"and holds no complete checkpoint{hint}")
    return latest


def _step_of(checkpoint: Path) -> int | None:
    name = checkpoint.name
    return int(name.split("-", 1)[1]) if name.startswith("step-") and name.split("-", 1)[1].isdigit() else None


def load_model(path: str | Path, config_path: str | Path | None = None, source: str | None = None,
               overrides: list[str] | None = None, flags: tuple[str, str] = ("--config", "--set")) -> LoadedModel:
    """Build the model of `path` (a model directory or a checkpoint directory) and load its weights.

    The config it is built from: `config_path` if given (its `data.spec` names the feature spec), else the
    one beside the weights (a model directory's, or the `config.yaml` and `feature_spec.yaml` the trainer saves in
    every checkpoint). `overrides` (`section.key=value`, as `train --set` takes them) apply to that config.
    `flags` name the options that give `config_path` and `overrides` in error messages."""
    import torch
    import torch.distributed.checkpoint as dcp

    from recsys_mtl.config.features import FeatureSpec
    from recsys_mtl.config.loader import ConfigError
    from recsys_mtl.config.train import TrainConfig
    from recsys_mtl.models import MultiTaskModel
    from recsys_mtl.train.checkpoint import DCP_ERRORS, CheckpointManager, describe_dcp_error, model_signature

    config_flag, set_flag = flags
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such model or checkpoint directory")
    is_model_dir = (path / CONFIG_FILE).is_file() and (path / CHECKPOINT_DIR).is_dir()
    checkpoint = _checkpoint_in(path / CHECKPOINT_DIR if is_model_dir else path)
    beside = path if is_model_dir else checkpoint  # where a saved config.yaml and feature_spec.yaml would be
    saved = (beside / CONFIG_FILE).is_file()
    if config_path is not None:
        config = TrainConfig.load(str(config_path), overrides)
        spec = FeatureSpec.load(config.data.spec)
    elif saved:
        try:
            trained = TrainConfig.load(str(beside / CONFIG_FILE), relative_to_file=False)
            config = TrainConfig.load(str(beside / CONFIG_FILE), overrides, relative_to_file=False) \
                if overrides else trained
        except ConfigError as exc:  # e.g. a key a later version renamed
            raise ConfigError(f"{exc}\n(that is the config saved with the checkpoint; give {config_flag} to build the "
                              f"model from another)") from None
        # the saved spec, unless an override names another (--set data.spec=...)
        spec = FeatureSpec.load(config.data.spec if config.data.spec != trained.data.spec else beside / SPEC_FILE)
    else:
        raise ConfigError(f"{checkpoint} holds no {CONFIG_FILE} (it predates checkpoints that carry their config): "
                          f"give the training config it was trained with ({config_flag}, with any {set_flag} "
                          f"overrides it was trained with), or point at a model directory "
                          f"({CONFIG_FILE}, {SPEC_FILE}, {CHECKPOINT_DIR}/)")
    if saved:
        drop = [f for f, given in ((config_flag, config_path is not None),
                                   (f"the {set_flag} overrides that change the model", bool(overrides))) if given]
        advice = f"{beside / CONFIG_FILE} is the config it was trained with: drop {' and '.join(drop)} to use it."
    else:
        advice = (f"Give the training config (and feature spec) this checkpoint was trained with ({config_flag}, "
                  f"plus the {set_flag} overrides the run was trained with; a tracked run keeps the resolved config as "
                  f"<output_dir>/tracking/config.yaml), or load the run's model directory instead.")
    # scoring needs the model's shape only: the optimizers and the weighting method it trained with do not matter
    CheckpointManager(checkpoint.parent).check_signature(
        checkpoint, model_signature(spec, config), ignore=("optim", "weighting"), advice=advice)

    model = MultiTaskModel(spec, config.model, seed=config.train.seed, device="cpu", embedding_device="meta")
    model.ebc = model.ebc.to_empty(device="cpu")  # DCP fills the tables: skip their random init
    # the trainer saved {"model": DMP state}, whose keys are those of MultiTaskTrainModule ("model.<name>")
    state = {"model": {f"model.{k}": v for k, v in model.state_dict().items()}}
    try:
        dcp.load(state, checkpoint_id=str(checkpoint))
    except DCP_ERRORS as exc:
        raise ConfigError(f"checkpoint {checkpoint} could not be loaded into the model of its config "
                          f"({describe_dcp_error(exc)}); if its files are damaged, load another step's") from exc
    model.load_state_dict({k[len("model."):]: v for k, v in state["model"].items()})
    model.eval()
    return LoadedModel(model=model, spec=spec, config=config, checkpoint=checkpoint, step=_step_of(checkpoint),
                       source=source or str(path))


def local_artifact_dir(artifact_uri: str) -> Path | None:
    """The local folder of a `file:` artifact URI (or a plain path), else None."""
    parsed = urlparse(artifact_uri)
    if parsed.scheme in ("", "file"):
        return Path(unquote(parsed.path))
    return None


def resolve_model_dir(client, tracking_uri: str, ref: str, dst: str | Path) -> tuple[Path, str | None]:
    """(local model directory, run id) for a run id, `models:/NAME/VERSION` or `models:/NAME@ALIAS`; downloads into
    `dst` unless local."""
    run_id, artifact_uri = None, None
    if ref.startswith("models:/"):
        name, _, version = ref[len("models:/"):].partition("/")
        if version:
            mv = client.get_model_version(name, version)
        elif "@" in name:
            name, _, alias = name.partition("@")
            mv = client.get_model_version_by_alias(name, alias)
        else:
            raise ValueError(f"{ref}: expected models:/NAME/VERSION or models:/NAME@ALIAS")
        run_id, artifact_uri = mv.run_id, mv.source
    else:
        run_id = ref
        run = client.get_run(ref)
        artifact_uri = f"{run.info.artifact_uri.rstrip('/')}/{MODEL_ARTIFACT}"
        if MODEL_ARTIFACT not in {a.path for a in client.list_artifacts(ref)}:
            raise FileNotFoundError(f"run {ref} has no {MODEL_ARTIFACT!r} artifact (was it trained with "
                                    "tracking.log_model: true, and did it finish?)")
    local = local_artifact_dir(artifact_uri)
    if local is not None and local.is_dir():
        return local, run_id
    from mlflow.artifacts import download_artifacts

    log.info("downloading %s", artifact_uri)
    return Path(download_artifacts(artifact_uri=artifact_uri, dst_path=str(dst),
                                   tracking_uri=tracking_uri)), run_id


def is_path_ref(ref: str) -> bool:
    """Whether a model reference names a local folder (else a run id or a models:/ URI)."""
    return Path(ref).exists() or os.sep in ref and not ref.startswith("models:/")


class ModelRefs:
    """Resolves model references (run id, models:/NAME/VERSION, models:/NAME@ALIAS, path) to loaded models;
    `load` returns (LoadedModel, the run id or None)."""

    def __init__(self, tracking_uri: str | None, tmp: Path) -> None:
        self.tracking_uri, self.tmp = tracking_uri, tmp
        self._client = None

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            from recsys_mtl.config.tracking import default_tracking_uri

            if self.tracking_uri is None and not Path("mlflow.db").exists():
                raise FileNotFoundError(f"no mlflow.db in {Path.cwd()}; pass --tracking-uri")
            self.tracking_uri = self.tracking_uri or default_tracking_uri()
            from recsys_mtl.tracking.sqlite_store import check_sqlite_store

            check_sqlite_store(self.tracking_uri, "--tracking-uri", must_exist=True, writable=False)
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def load(self, ref: str, config: str | None, is_path: bool, overrides: list[str], flags: tuple[str, str]):
        if is_path:
            return load_model(ref, config, overrides=overrides, flags=flags), None
        from mlflow.exceptions import MlflowException

        try:
            local, run_id = resolve_model_dir(self.client, self.tracking_uri, ref, self.tmp / ref.replace("/", "_"))
        except MlflowException as exc:
            raise FileNotFoundError(f"{ref}: not found in the tracking store {self.tracking_uri} ({exc.message})") from None
        from recsys_mtl.tracking.model_manifest import verify_run_model

        verify_run_model(self.client, run_id, local, ref)  # before torch reads any of it (DCP metadata is a pickle)
        return load_model(local, config, source=ref, overrides=overrides, flags=flags), run_id


__all__ = ["ModelRefs", "is_path_ref", "MODEL_ARTIFACT", "CONFIG_FILE", "SPEC_FILE", "CHECKPOINT_DIR", "LoadedModel", "load_model",
           "resolve_model_dir", "local_artifact_dir"]
