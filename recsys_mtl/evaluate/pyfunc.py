"""The logged model as an MLflow pyfunc model.

A tracked run's `model/` artifact (config.yaml, feature_spec.yaml, checkpoint/) also holds an `MLmodel`
file of the python_function flavor whose loader is this module, with `data: .` (the folder itself) and
an input signature built from the feature spec. So MLflow's own tools load it:

    mlflow.pyfunc.load_model("models:/NAME@champion").predict(pandas_df)   # pred_<task> columns
    mlflow models serve -m models:/NAME@champion --env-manager local       # POST /invocations

The predictions are `recsys-mtl predict`'s (the same `score_table`): a probability per binary task, the
prediction on the label's original scale per regression task. Feature columns missing or of the wrong
type are refused by MLflow's schema check or by `score_table`, naming the column.
"""

from __future__ import annotations

from pathlib import Path

MLMODEL = "MLmodel"


def input_signature(spec):
    """MLflow signature: one column per feature (ids long, lists of ids, dense double), one output per task."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema
    from mlflow.types.schema import Array

    from recsys_mtl.evaluate.scoring import prediction_columns

    inputs = [ColSpec(Array("long") if f.multi_valued else "long", f.source) for f in spec.sparse]
    inputs += [ColSpec("double", f.source) for f in spec.dense]
    outputs = [ColSpec("float", name) for name in prediction_columns(spec)]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs))


def write_mlmodel(folder: str | Path, spec, run_id: str | None = None) -> Path:
    """Write the `MLmodel` file that makes a model directory (config.yaml, feature_spec.yaml, checkpoint/) a pyfunc
    model; returns its path."""
    import mlflow.pyfunc
    from mlflow.models import Model

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = Model(run_id=run_id, signature=input_signature(spec))
    mlflow.pyfunc.add_to_model(model, loader_module=__name__, data=".")
    path = folder / MLMODEL
    model.save(str(path))
    return path


class MultiTaskPyfuncModel:
    """What MLflow's pyfunc wrapper calls: `predict(DataFrame) -> DataFrame` of pred_<task> columns."""

    def __init__(self, model_dir: str | Path) -> None:
        from recsys_mtl.evaluate.loading import load_model

        self.loaded = load_model(model_dir)

    def predict(self, model_input, params=None):
        import pandas as pd
        import pyarrow as pa

        from recsys_mtl.evaluate.scoring import prediction_columns, score_table

        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        table = pa.Table.from_pandas(model_input, preserve_index=False)
        scores = score_table(self.loaded.model, self.loaded.spec, table, "the pyfunc input")
        return pd.DataFrame(scores, columns=prediction_columns(self.loaded.spec))


def _load_pyfunc(data_path: str) -> MultiTaskPyfuncModel:
    """MLflow's entry point (`loader_module`): `data_path` is the model directory itself (`data: .`)."""
    return MultiTaskPyfuncModel(data_path)


__all__ = ["MLMODEL", "MultiTaskPyfuncModel", "input_signature", "write_mlmodel"]
