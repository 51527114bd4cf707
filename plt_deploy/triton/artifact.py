"""What a Triton model folder serves, checked the same way when the repository is written and when
Triton loads it (so a bad file gives the same one-line message at `triton-repo` time and in the
server's log, where the model then stays not ready).

- onnxruntime / tensorrt: an export folder; its manifest verifies every file's sha256
  (export.manifest.read_manifest).
- tensorrt also: engines recorded by `plt-deploy build` (build.plan_check), and the plugin library
  they were built with (its sha256 must be the one the engines record).
- torch: a checkpoint folder; the sha256 of config.json and model.safetensors is recorded in
  config.pbtxt and compared at load.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ArtifactError, InputError
from .config import BACKENDS


@dataclass(frozen=True)
class Checked:
    kind: str  # "export" | "checkpoint"
    plugin: Path | None = None  # TensorRT plugin library to ship
    plugin_sha256: str | None = None
    checkpoint_sha256: dict[str, str] | None = None
    limits: object = None  # backends.base.SessionLimits of the artifact: what a session of it can hold


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def check_artifact(path: str | Path, backend: str, plugin: str | Path | None = None,
                   plugin_sha256: str | None = None, checkpoint_sha256: dict[str, str] | None = None) -> Checked:
    """Verify `path` for `backend`; expected hashes (from config.pbtxt) are compared when given."""
    from ..backends.folders import check_folder_fits

    check_backend(backend)
    path = Path(path)
    check_folder_fits(backend, path)  # a checkpoint for an export backend, or the reverse
    if backend == "torch":
        return _check_checkpoint(path, checkpoint_sha256)
    from ..export.manifest import read_manifest

    manifest = read_manifest(path, verify_hashes=True)
    if backend == "onnxruntime":
        from ..backends.ort_backend import check_runnable, export_limits

        check_runnable(manifest, path)
        return Checked("export", limits=export_limits(manifest))
    return _check_tensorrt(path, manifest, plugin, plugin_sha256)


def _check_checkpoint(path: Path, expected: dict[str, str] | None) -> Checked:
    from ..backends.base import SessionLimits
    from ..checkpoint import load_config, weight_files
    from ..export.manifest import model_identity

    config = load_config(path)  # CheckpointError naming the file when config.json is missing or invalid
    for f in weight_files(path):  # model.safetensors, or a Hugging Face folder's shards (a missing one named)
        if not f.is_file():
            raise ArtifactError(f"{f}: file not found; {path} is not a complete checkpoint")
    have = model_identity(path)
    for name, want in (expected or {}).items():
        if have.get(name) != want:
            raise ArtifactError(f"{path / name}: sha256 does not match the one recorded in config.pbtxt; the file "
                                "is damaged or was replaced: rewrite the repository with `plt-deploy triton-repo`")
    return Checked("checkpoint", checkpoint_sha256=have, limits=SessionLimits.of_config(config))


def _check_tensorrt(path: Path, manifest, plugin, plugin_sha256: str | None) -> Checked:
    from ..backends.trt_backend import engine_limits
    from ..build import plan_check
    from ..build.plugin import find_plugin, plugin_sha256 as sha_of

    manifest_data = manifest.data

    where = path / "manifest.json"
    if plugin is not None:  # the user's own --plugin flag is checked before the artifact's content
        find_plugin(plugin)
    built = manifest_data.get(plan_check.SECTION)
    if not built:  # engines first: a runtime never builds them, the message names `plt-deploy build`
        plan_check.trt_section(manifest_data, where)
    if built and not built.get("plugin"):  # vanilla / looped exports: no G-SWA node, no plugin
        section = plan_check.trt_section(manifest_data, where)
        plan_check.check_engine_files(path, section, verify_hashes=True)
        return Checked("export", limits=engine_limits(manifest, section))
    recorded = (built or {}).get("plugin") or {}
    if plugin is None and recorded.get("path") and Path(recorded["path"]).is_file():
        plugin = recorded["path"]
    lib = find_plugin(plugin)  # ArtifactError naming the path and how to build it
    sha = sha_of(lib)
    if plugin_sha256 is not None and sha != plugin_sha256:
        raise ArtifactError(f"{lib}: sha256 does not match the plugin_sha256 recorded in config.pbtxt; the library "
                            "is damaged or was replaced: rewrite the repository with `plt-deploy triton-repo`")
    section = plan_check.trt_section(manifest_data, where)
    plan_check.check_plugin(section, sha, lib, where)
    plan_check.check_engine_files(path, section, verify_hashes=True)
    return Checked("export", plugin=lib, plugin_sha256=sha, limits=engine_limits(manifest, section))
