"""SHA-256 manifest of a logged model, checked before anything of it is loaded from a store.

A model directory in an artifact store is a trust boundary: DCP's `.metadata` is a pickle, so a crafted file
there would run code when the checkpoint is opened. At log time the trainer writes `manifest.json` (every file
of the model directory: relative path -> size and SHA-256) into the model, and the run's tag
`recsys_mtl.model_manifest_sha256` records the manifest's own hash in the tracking store. `verify_model_dir`
recomputes both before a load (evaluate --run / models:/, the pipeline's warm start and champion scoring), so a
file changed in the artifact store, or a manifest rewritten to match, is refused in one line before any of it
is read by torch. What stays trusted: the tracking store's tags, and local checkpoints (resume, init_from PATH).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
MANIFEST_TAG = "recsys_mtl.model_manifest_sha256"
_CHUNK = 1 << 20


class ModelIntegrityError(RuntimeError):
    """A model's files differ from the manifest recorded when it was logged."""

    exit_code = 2  # the CLI prints it as one line


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_of(files: dict[str, Path]) -> dict[str, dict[str, object]]:
    """{relative path: {"size", "sha256"}} of `files` (relative path in the model directory -> local file)."""
    return {rel: {"size": path.stat().st_size, "sha256": file_sha256(path)} for rel, path in sorted(files.items())}


def write_manifest(files: dict[str, Path], out: Path) -> str:
    """Write the manifest of `files` to `out`; returns its SHA-256 (for the run's tag)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"files": manifest_of(files)}, indent=1, sort_keys=True) + "\n")
    return file_sha256(out)


def verify_model_dir(model_dir: str | Path, expected_manifest_sha256: str | None, source: str) -> None:
    """Refuse (ModelIntegrityError, one line naming `source` and the file) a model directory whose files are not
    exactly those of its manifest, or whose manifest is not the one the tracking store recorded. A model logged
    before manifests (no tag, no manifest) loads with a warning."""
    model_dir = Path(model_dir)
    manifest_path = model_dir / MANIFEST_FILE
    if expected_manifest_sha256 is None and not manifest_path.is_file():
        log.warning("%s: logged without a manifest (before recsys-mtl recorded them): its files are not verified",
                    source)
        return

    def refuse(what: str) -> ModelIntegrityError:
        return ModelIntegrityError(f"{source}: {what}; the model in the artifact store was changed or damaged since "
                                   "it was logged: not loaded (log it again from its training run)")

    if not manifest_path.is_file():
        raise refuse(f"{MANIFEST_FILE} is missing from {model_dir}")
    if expected_manifest_sha256 is not None and file_sha256(manifest_path) != expected_manifest_sha256:
        raise refuse(f"{manifest_path} is not the manifest recorded with the run (tag {MANIFEST_TAG})")
    try:
        recorded = json.loads(manifest_path.read_text())["files"]
    except (ValueError, KeyError, TypeError) as exc:
        raise refuse(f"{manifest_path} is not a manifest ({exc})") from None
    present = {p.relative_to(model_dir).as_posix(): p for p in model_dir.rglob("*")
               if p.is_file() and p.name != MANIFEST_FILE}
    extra = sorted(set(present) - set(recorded))
    missing = sorted(set(recorded) - set(present))
    if extra or missing:
        raise refuse(", ".join(filter(None, [f"files not in its manifest: {', '.join(extra[:3])}" if extra else "",
                                             f"files missing: {', '.join(missing[:3])}" if missing else ""])))
    for rel, entry in recorded.items():
        path = present[rel]
        if path.stat().st_size != entry["size"] or file_sha256(path) != entry["sha256"]:
            raise refuse(f"{rel} does not match its SHA-256 in the manifest")


def verify_run_model(client, run_id: str, model_dir: str | Path, source: str) -> None:
    """`verify_model_dir` against the manifest hash the tracking store holds for run `run_id` (this is the one
    function to call before loading a model downloaded or read from an artifact store)."""
    verify_model_dir(model_dir, client.get_run(run_id).data.tags.get(MANIFEST_TAG), source)


__all__ = ["MANIFEST_FILE", "MANIFEST_TAG", "ModelIntegrityError", "verify_model_dir", "verify_run_model",
           "write_manifest"]
