"""The MLflow model registry: a run's logged `model/` artifact becomes a version of a registered model.

The version's source is the run's artifact location of `model/` (config, feature spec and the
DCP checkpoint directory), which `recsys-mtl evaluate --model models:/NAME/VERSION` loads back.
(`mlflow.pytorch.log_model` is not used: its torch.export format fails on KeyedJaggedTensor inputs.)
"""

from __future__ import annotations

from recsys_mtl.evaluate.loading import MODEL_ARTIFACT


def ensure_registered_model(client, name: str) -> None:
    """Create the registered model `name` unless it exists."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

    try:
        client.create_registered_model(name, description="recsys-mtl multi-task model (DCP checkpoint + config)")
    except MlflowException as exc:
        if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise


def register_run_model(client, name: str, run_id: str, artifact_path: str = MODEL_ARTIFACT):
    """Create a new version of `name` whose source is `<run artifacts>/<artifact_path>`; returns the ModelVersion."""
    run = client.get_run(run_id)
    names = {a.path for a in client.list_artifacts(run_id)}
    if artifact_path not in names:
        raise ValueError(f"run {run_id} has no {artifact_path!r} artifact to register (artifacts: {sorted(names)})")
    ensure_registered_model(client, name)
    source = f"{run.info.artifact_uri.rstrip('/')}/{artifact_path}"
    return client.create_model_version(name, source, run_id=run_id,
                                       tags={"recsys_mtl.weighting": run.data.tags.get("recsys_mtl.weighting", "")})


def run_model_versions(client, name: str, run_id: str) -> list:
    """The versions of `name` registered from run `run_id`, oldest first (none if `name` does not exist)."""
    found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    return sorted(found, key=lambda mv: int(mv.version))


__all__ = ["ensure_registered_model", "register_run_model", "run_model_versions"]
