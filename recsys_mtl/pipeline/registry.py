"""The champion in the MLflow model registry: one registered model, one alias.

Registration is idempotent (a version is found again by its run id), so a
promote step that died after creating the version and before moving the alias
completes on the next run without a second version.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

log = logging.getLogger(__name__)

CHECKPOINT_TAG = "recsys_mtl.checkpoint"
DATE_TAG = "recsys_mtl.pipeline.date"


@dataclasses.dataclass(frozen=True)
class Champion:
    version: str
    run_id: str
    checkpoint: str  # a local checkpoint directory


class ChampionRegistry:
    def __init__(self, tracking_uri: str, model_name: str, alias: str = "champion") -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self.model_name = model_name
        self.alias = alias

    def champion(self) -> Champion | None:
        mv = self._champion_version()
        return None if mv is None else self._as_champion(mv)

    def champion_version(self) -> str | None:
        """The version the alias names now (nothing downloaded), or None."""
        mv = self._champion_version()
        return None if mv is None else str(mv.version)

    def _champion_version(self):
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version_by_alias(self.model_name, self.alias)
        except MlflowException:
            return None

    def version(self, version: str) -> Champion:
        return self._as_champion(self.client.get_model_version(self.model_name, version))

    def _as_champion(self, mv) -> Champion:
        checkpoint = mv.tags.get(CHECKPOINT_TAG, "")
        if not checkpoint or not Path(checkpoint).is_dir():
            import mlflow.artifacts

            checkpoint = mlflow.artifacts.download_artifacts(artifact_uri=mv.source, tracking_uri=self.client.tracking_uri)
        from recsys_mtl.tracking.model_manifest import verify_run_model

        # checked whenever the champion is looked up: it is then warm-started from and scored
        verify_run_model(self.client, mv.run_id, checkpoint, f"{self.model_name} version {mv.version}")
        return Champion(version=str(mv.version), run_id=mv.run_id, checkpoint=str(checkpoint))

    def register(self, run_id: str, source: str, checkpoint: str, date: str) -> str:
        """The version for `run_id`, created if needed. Does not move the alias."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(self.model_name)
        except MlflowException:
            self.client.create_registered_model(self.model_name, description="recsys-mtl daily pipeline champion history")
        existing = self.version_of_run(run_id)
        if existing is not None:
            return existing
        mv = self.client.create_model_version(
            self.model_name, source=source, run_id=run_id, tags={CHECKPOINT_TAG: checkpoint, DATE_TAG: date},
            description=f"candidate trained on {date}",
        )
        return str(mv.version)

    def version_of_run(self, run_id: str) -> str | None:
        """The version registered for `run_id`, or None (also when the model is not registered yet)."""
        from mlflow.exceptions import MlflowException

        try:
            existing = self.client.search_model_versions(f"name = '{self.model_name}' and run_id = '{run_id}'")
        except MlflowException:
            return None
        return str(existing[0].version) if existing else None

    def tag_version(self, version: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(self.model_name, version, key, value)

    def promote(self, version: str) -> None:
        self.client.set_registered_model_alias(self.model_name, self.alias, version)
        log.info("%s@%s -> version %s", self.model_name, self.alias, version)
