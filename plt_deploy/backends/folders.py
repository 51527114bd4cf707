"""Which kind of folder a path is (checkpoint or export), and whether it fits a backend."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError

CHECKPOINT_BACKENDS = ("torch",)
EXPORT_BACKENDS = ("onnxruntime", "tensorrt")


def folder_kind(path: str | Path) -> str | None:
    """'checkpoint' (config.json + model.safetensors), 'export' (manifest.json) or None."""
    path = Path(path)
    if (path / "manifest.json").is_file():
        return "export"
    if (path / "config.json").is_file() or (path / "model.safetensors").is_file():
        return "checkpoint"
    return None


def check_folder_fits(backend: str, path: str | Path) -> None:
    """Refuse, in one line, a checkpoint given to an export backend or the other way round."""
    kind = folder_kind(path)
    if kind == "checkpoint" and backend in EXPORT_BACKENDS:
        raise InputError(f"{path} is a checkpoint folder; --backend {backend} runs an export folder: make one "
                         f"with `plt-deploy export --model {path} --out export/NAME`, or use --backend torch")
    if kind == "export" and backend in CHECKPOINT_BACKENDS:
        raise InputError(f"{path} is an export folder; --backend torch runs a checkpoint folder (config.json + "
                         "model.safetensors): pass the checkpoint, or use --backend onnxruntime for this export")


def preflight(backend: str, path: str | Path) -> None:
    """Cheap checks before any heavy import: the folder exists, is the kind `backend` runs, and its
    model config is valid (a bad config fails in milliseconds, not after torch has loaded)."""
    path = Path(path)
    if not path.is_dir():
        kind = "export" if backend in EXPORT_BACKENDS else "checkpoint"
        raise InputError(f"{path}: no such {kind} folder")
    check_folder_fits(backend, path)
    check_config(path)


def check_config(path: str | Path) -> None:
    """The model config of a checkpoint (config.json) or an export (manifest.json) is valid."""
    import json

    from ..config import PLTConfig
    from ..errors import ArtifactError, CheckpointError, ConfigError

    from .. import hf

    path = Path(path)
    kind = folder_kind(path)
    try:
        if kind == "checkpoint" and hf.is_hf_folder(path):
            hf.config_from_hf(hf.read_json(path / "config.json"), path / "config.json")
        elif kind == "checkpoint":
            PLTConfig.from_json(path / "config.json")
        elif kind == "export":
            data = json.loads((path / "manifest.json").read_text())
            PLTConfig.from_dict(data["model"]["config"])
    except ConfigError as exc:
        raise (CheckpointError if kind == "checkpoint" else ArtifactError)(str(exc)) from None
    except (ValueError, KeyError, TypeError, AttributeError):
        pass  # a malformed manifest: read_manifest reports it with the details


def require_kind(path: str | Path, kind: str, flag: str) -> None:
    """For commands that take a folder of one kind under a flag (export --model, check --onnx, ...)."""
    have = folder_kind(path)
    if not Path(path).is_dir():
        raise InputError(f"{flag} {path}: no such {kind} folder")
    if have is not None and have != kind:
        other = {"checkpoint": "export", "export": "checkpoint"}[kind]
        article = "an" if other == "export" else "a"
        what = " (config.json + model.safetensors)" if kind == "checkpoint" else \
            " (manifest.json + ONNX, from `plt-deploy export`)"
        raise InputError(f"{flag} {path} is {article} {other} folder; {flag} takes {'an' if kind == 'export' else 'a'} {kind} folder{what}")


def variant_dirs(out: str | Path, variants) -> dict[str, Path]:
    """Where `train` writes each variant's checkpoint: out/ itself for one variant, else out/VARIANT."""
    out, variants = Path(out), list(variants)
    return {v: out if len(variants) == 1 else out / v for v in variants}


def refuse_existing_checkpoints(out: str | Path, variants, force: bool = False) -> None:
    """`train` writes one checkpoint per variant (out/ itself for one variant): refuse to overwrite
    any without --force, saying when it is the partial result of an interrupted run; refuse, even
    with --force, a folder that is not a plt-deploy checkpoint (output_folder.check_checkpoint_folder)."""
    import json

    from ..checkpoint import CONFIG_FILE, RESULTS_FILE
    from ..errors import CheckpointError
    from ..output_folder import check_checkpoint_folder

    out = Path(out)
    dirs = variant_dirs(out, variants)
    if len(dirs) > 1 and (out / CONFIG_FILE).is_file():  # several variants: out/ holds their folders
        raise CheckpointError(f"{out}: holds a checkpoint ({CONFIG_FILE}); training several variants writes one "
                              "subfolder each and train_results.json there: choose another --out")
    try:
        record = json.loads((out / RESULTS_FILE).read_text())
        partial = {r["variant"]: (r["steps"], record["steps"]) for r in record["results"] if r.get("interrupted")}
    except (OSError, ValueError, KeyError, TypeError):
        partial = {}
    for v, d in dirs.items():
        if not force and v in partial and (d / CONFIG_FILE).exists():
            done, total = partial[v]
            raise CheckpointError(f"{d}: already holds the checkpoint of an interrupted run ({v} at step "
                                  f"{done} of {total}); training does not resume: pass --force to train again")
        check_checkpoint_folder(d, force, "train")
