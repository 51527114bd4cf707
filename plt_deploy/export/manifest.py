"""The export manifest (manifest.json): what runners read instead of guessing tensor names.

Written last and atomically by the exporter. `read_manifest` refuses, with an ArtifactError naming
the file, anything a runner must not trust: a missing or corrupt file, a sha256 that does not match
(flipped bytes, a manifest copied from another export), a missing external-data file, a custom op
name/domain/version other than this build's contract, a manifest format it does not know, or a
checkpoint other than the one exported (`expect_model`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..checkpoint import atomic_write_bytes
from ..config import PLTConfig
from ..errors import ArtifactError, ConfigError
from ..ops import contract
from .consistency import check_manifest_matches_graphs
from .io_spec import GRAPHS, GraphSpec

MANIFEST_FILE = "manifest.json"
ENGINE_DIR = "tensorrt"  # `plt-deploy build` writes engines and the timing cache here, inside the export
TIMING_CACHE = "timing.cache"  # the timing cache's default name in ENGINE_DIR


def owned_names(folder: Path) -> set[str]:
    """What `export` / `build` wrote into an export folder (output_folder.check_replaceable: --force
    replaces only these): the manifest, the files it lists, and in the engine folder the plans,
    the timing cache and their leftover temporaries (a user's file there is not ours). A manifest
    that is not ours (no plt-deploy format) owns nothing, so nothing in the folder is taken for ours."""
    import re

    folder = Path(folder)
    try:
        data = json.loads((folder / MANIFEST_FILE).read_text())
        files = data.get("files") or {} if data.get("format") == FORMAT else None
    except (OSError, ValueError, AttributeError):
        files = None
    if files is None:
        return set()
    engine_files = [f"{g}.plan" for g in GRAPHS] + [TIMING_CACHE]  # what build/engine.py writes there
    temporary = re.compile(r"\.(%s)\..+\.tmp" % "|".join(map(re.escape, engine_files)))
    engines = folder / ENGINE_DIR
    leftovers = [p.name for p in engines.iterdir() if temporary.fullmatch(p.name)] if engines.is_dir() else []
    return {MANIFEST_FILE, *(f"{ENGINE_DIR}/{n}" for n in engine_files + leftovers),
            *(name for name in (files if isinstance(files, dict) else {}) if isinstance(name, str))}


FORMAT = "plt-deploy.onnx-export"
FORMAT_VERSION = 4  # 2: every state output has alias_of (prefill too) and in_place; 3: cache writes are
# TensorScatter (in place, TensorRT KVCacheUpdate), rings 4-D [batch, rows*kv_heads, ring, head_dim];
# 4: the prefill graph extends from any position (takes the state and start_pos: export/io_spec.py)


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def model_identity(model_dir: Path) -> dict:
    """sha256 of the checkpoint's config.json and weight files (model.safetensors, or a Hugging Face
    folder's shards): which model an export came from."""
    return {p.name: sha256_file(p) for p in model_files(model_dir)}


def model_files(model_dir: Path) -> list[Path]:
    """The checkpoint files that say which model it is: config.json and the weight files."""
    from ..checkpoint import CONFIG_FILE, weight_files

    return [Path(model_dir) / CONFIG_FILE, *weight_files(model_dir)]


def model_files_state(model_dir: Path) -> dict:
    """(inode, size, mtime) of the files model_identity hashes: taken before the checkpoint is loaded
    and compared after it is hashed, so an export never names weights other than those it holds
    (a `train --force` into --model during the export replaced them: reported)."""
    return {p.name: (s.st_ino, s.st_size, s.st_mtime_ns) for p in model_files(model_dir) for s in [p.stat()]}


def op_entry() -> dict:
    return {"name": contract.OP_NAME, "domain": contract.OP_DOMAIN, "version": contract.OP_VERSION,
            "plugin_namespace": contract.PLUGIN_NAMESPACE, "plugin_version": str(contract.OP_VERSION)}


def write_manifest(folder: Path, manifest: dict) -> Path:
    """Fill in every file's sha256 (all files in the folder but the manifest and a temporary's marker)
    and write atomically."""
    folder = Path(folder)
    from ..output_folder import TEMPORARY_MARKER  # a folder being written holds it until swapped in

    manifest["files"] = {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in sorted(folder.iterdir())
                         if p.is_file() and p.name not in (MANIFEST_FILE, TEMPORARY_MARKER)}
    path = folder / MANIFEST_FILE
    atomic_write_bytes(path, (json.dumps(manifest, indent=2) + "\n").encode())
    return path


class Manifest:
    """A verified manifest: config, graph specs, cache layout and file paths."""

    def __init__(self, folder: Path, data: dict):
        self.folder, self.data = folder, data
        self.config = PLTConfig.from_dict(data["model"]["config"])
        self.graphs = {g: GraphSpec.from_dict(g, data["graphs"][g]) for g in GRAPHS}
        self.dtype: str = data["dtype"]
        self.max_batch: int = data["max_batch"]
        self.max_seq: int = data["max_seq"]
        # weight storage (export/quantize.py): {"format": "int4", "block_size": 32, "method": "rtn", ...};
        # manifests written before quantized exports existed have float weights in `dtype`
        self.weights: dict = data.get("weights") or {"format": {"float32": "fp32", "float16": "fp16",
                                                                "bfloat16": "bf16"}.get(self.dtype, self.dtype)}

    @property
    def quantized(self) -> bool:
        """int8/int4 weights: compared with the float model by quantization error, not parity."""
        return "block_size" in self.weights

    def graph_path(self, graph: str) -> Path:
        return self.folder / self.data["graphs"][graph]["file"]


def read_manifest(folder: str | Path, verify_hashes: bool = True, expect_model: str | Path | None = None) -> Manifest:
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not folder.is_dir():
        raise ArtifactError(f"{folder}: no such export folder (make one with `plt-deploy export`)")
    if not path.is_file():
        raise ArtifactError(f"{path}: file not found; {folder} is not a complete export")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ArtifactError(f"{path}: not a plt-deploy ONNX export manifest")
    if data.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{path}: manifest format version {data.get('format_version')!r}, this plt-deploy "
                            f"reads {FORMAT_VERSION} (prefill from any position: the prefill graph takes the state); re-export "
                            f"the model with `plt-deploy export`")
    try:
        op = data["custom_op"]
        contract.check_version(op.get("version"), str(path))  # a v1 export: one line, how to re-export
        for key, want in op_entry().items():
            if op.get(key) != want:
                raise ArtifactError(f"{path}: custom op {key} is {op.get(key)!r}, this plt-deploy implements "
                                    f"{want!r}; re-export the model")
        files = data["files"]
        for graph in GRAPHS:
            gfile = data["graphs"][graph]["file"]
            if gfile not in files:
                raise ArtifactError(f"{path}: graph file {gfile} is not listed in the manifest's files")
        manifest = Manifest(folder, data)
    except KeyError as exc:
        raise ArtifactError(f"{path}: missing field {exc}") from None
    except (ConfigError, TypeError) as exc:
        raise ArtifactError(f"{path}: invalid model config ({exc})") from None
    for name, entry in files.items():
        fpath = folder / name
        if not fpath.is_file():
            raise ArtifactError(f"{fpath}: file not found (listed in {path}); the export is incomplete")
        if fpath.stat().st_size != entry["bytes"]:
            raise ArtifactError(f"{fpath}: {fpath.stat().st_size} bytes, {path} records {entry['bytes']}; "
                                "the file is damaged or from another export")
        if verify_hashes and sha256_file(fpath) != entry["sha256"]:
            raise ArtifactError(f"{fpath}: sha256 does not match {path}; the file is damaged or from another export")
    protos = {graph: check_op_version(manifest.graph_path(graph)) for graph in GRAPHS}  # each file read once
    check_manifest_matches_graphs(manifest, path, protos)
    if expect_model is not None:
        want = model_identity(Path(expect_model))
        have = data["model"].get("sha256", {})
        if want != have:
            raise ArtifactError(f"{path}: export was made from another model than {expect_model} "
                                "(checkpoint sha256 differs); re-export or pass the matching --model")
    return manifest


def check_op_version(onnx_path: Path):
    """The file imports domain plt at exactly the contract's version (if it uses the op at all).

    Returns the loaded ModelProto (without external data) for the other load-time checks."""
    import onnx

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001  (protobuf raises several types)
        raise ArtifactError(f"{onnx_path}: not a readable ONNX file ({str(exc).splitlines()[0]})") from None
    for o in model.opset_import:
        if o.domain == contract.OP_DOMAIN:
            contract.check_version(o.version, f"{onnx_path}: imports custom op domain {o.domain!r}")
    for f in model.functions:
        if f.domain == contract.OP_DOMAIN and f.name == contract.OP_NAME:
            break
    else:
        if any(n.domain == contract.OP_DOMAIN for n in model.graph.node):
            raise ArtifactError(f"{onnx_path}: uses {contract.OP_DOMAIN}::{contract.OP_NAME} but carries no "
                                "local function for it; re-export the model")
    return model
