"""Refuse a TensorRT plan that cannot run here, with a message saying why and what to do.

A serialized engine only deserializes on the TensorRT version that built it (we do not build
version-compatible plans) and only runs on GPUs of the compute capability it was built for (no
hardware-compatibility level). It also embeds the G-SWA plugin's fields but not its code, so the
plugin library must be the one it was built with. The manifest's "tensorrt" section records all
three; everything here is pure Python over that dict so the CPU tests can exercise it.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ArtifactError

SECTION = "tensorrt"
SECTION_FORMAT = 1


def trt_section(manifest_data: dict, where: str | Path = "manifest.json") -> dict:
    """The manifest's "tensorrt" section, or ArtifactError saying how to make it."""
    section = manifest_data.get(SECTION)
    if not section:
        raise ArtifactError(f"{where}: no TensorRT engines recorded; build them with "
                            f"`plt-deploy build --onnx {Path(where).parent}`")
    if section.get("format") != SECTION_FORMAT:
        raise ArtifactError(f"{where}: TensorRT section format {section.get('format')!r}, this plt-deploy reads "
                            f"{SECTION_FORMAT}; rebuild with `plt-deploy build`")
    for key in ("version", "compute_capability", "plugin", "engines"):
        if key not in section:
            raise ArtifactError(f"{where}: TensorRT section lacks {key!r}; rebuild with `plt-deploy build`")
    return section


def check_platform(section: dict, running_version: str, running_cc: str, where: str | Path = "manifest.json") -> None:
    """The plan's TensorRT version and compute capability must equal the running ones."""
    built_v, built_cc = str(section["version"]), str(section["compute_capability"])
    if built_v != str(running_version):
        raise ArtifactError(f"{where}: engines were built with TensorRT {built_v}, this process runs TensorRT "
                            f"{running_version}; a plan only loads on the version that built it: rebuild with "
                            "`plt-deploy build` (or install TensorRT " + built_v + ")")
    if built_cc != str(running_cc):
        raise ArtifactError(f"{where}: engines were built for a GPU of compute capability {built_cc} "
                            f"({section.get('device', 'unknown GPU')}), this GPU is {running_cc}; rebuild on this "
                            "machine with `plt-deploy build`")


def check_plugin(section: dict, loaded_sha256: str, loaded_path: str | Path, where: str | Path = "manifest.json") -> None:
    """The loaded plugin library must be byte-identical to the one the engines were built with."""
    if not section.get("plugin"):  # vanilla / looped exports have no G-SWA node: no plugin in the plan
        return
    want = section["plugin"].get("sha256")
    if want and want != loaded_sha256:
        raise ArtifactError(f"{where}: engines were built with plugin library sha256 {want[:12]}... "
                            f"({section['plugin'].get('path', '?')}), the loaded {loaded_path} is "
                            f"{loaded_sha256[:12]}...; pass --plugin with the library used at build time or "
                            "rebuild with `plt-deploy build`")


def check_engine_files(folder: str | Path, section: dict, verify_hashes: bool = True) -> dict[str, Path]:
    """graph -> plan path, each present with the recorded size (and sha256)."""
    from ..export.manifest import sha256_file

    folder = Path(folder)
    out = {}
    for graph, entry in section["engines"].items():
        path = folder / entry["file"]
        if not path.is_file():
            raise ArtifactError(f"{path}: engine file not found (listed in {folder / 'manifest.json'}); rebuild with "
                                f"`plt-deploy build --onnx {folder}`")
        if path.stat().st_size != entry["bytes"] or (verify_hashes and sha256_file(path) != entry["sha256"]):
            raise ArtifactError(f"{path}: does not match the sha256/size in {folder / 'manifest.json'}; the plan is "
                                f"damaged or from another build: rebuild with `plt-deploy build --onnx {folder}`")
        out[graph] = path
    return out


def check_all(folder: str | Path, manifest_data: dict, running_version: str, running_cc: str,
              plugin_sha256: str | None = None, plugin_path: str | Path | None = None,
              verify_hashes: bool = True) -> tuple[dict, dict[str, Path]]:
    """Every check above, in the order a user can act on. Returns (section, graph -> plan path)."""
    where = Path(folder) / "manifest.json"
    section = trt_section(manifest_data, where)
    check_platform(section, running_version, running_cc, where)
    if plugin_sha256 is not None:
        check_plugin(section, plugin_sha256, plugin_path or "?", where)
    return section, check_engine_files(folder, section, verify_hashes)
