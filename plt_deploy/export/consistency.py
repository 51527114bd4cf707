"""Does a manifest describe its graphs? Checked at load, so an edited manifest is refused in one
line instead of failing deep inside a runtime (or, worse, passing a check it should fail).

Three comparisons, all without loading weights:
  1. the manifest's model config -> the I/O it implies (io_spec, matched by role and index, so a
     renamed tensor is fine) against the manifest's recorded graph specs: shapes and dtypes;
  2. the recorded specs against the ONNX files' own graph inputs and outputs: names, dtypes and
     static dims;
  3. the config's G-SWA attributes (window, heads) against every custom node's attributes;
  4. the config, max_batch and max_seq against what each graph records it was built for (the
     `plt.export` metadata, inside the hashed ONNX file).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ArtifactError
from ..ops import contract
from .io_spec import graph_specs

_ONNX_DTYPES = {1: "float32", 10: "float16", 16: "bfloat16", 7: "int64"}


def _key(t) -> tuple:
    return (t.role, t.index)


def check_manifest_matches_graphs(manifest, manifest_path: Path, protos: dict) -> None:
    """protos: graph -> its ModelProto, loaded without external data (read_manifest reads each once)."""
    cfg = manifest.config
    implied = graph_specs(cfg, manifest.max_seq, manifest.dtype)
    for graph, spec in manifest.graphs.items():
        want = {_key(t): t for t in (*implied[graph].inputs, *implied[graph].outputs)}
        for t in (*spec.inputs, *spec.outputs):
            w = want.get(_key(t))
            if w is None or tuple(w.shape) != tuple(t.shape) or w.dtype != t.dtype:
                implied_shape = list(w.shape) if w is not None else "no such tensor"
                raise ArtifactError(f"{manifest_path}: {graph} tensor {t.name} is {list(t.shape)} {t.dtype}, but the "
                                    f"manifest's model config implies {implied_shape}; the manifest was edited or "
                                    "belongs to another export: re-export the model")
        path = manifest.graph_path(graph)
        proto = protos[graph]
        actual = {v.name: v for v in (*proto.graph.input, *proto.graph.output)}
        for t in (*spec.inputs, *spec.outputs):
            v = actual.get(t.name)
            if v is None:
                raise ArtifactError(f"{path}: has no input or output {t.name!r} named in {manifest_path}; "
                                    "re-export the model")
            tt = v.type.tensor_type
            dims = tuple(d.dim_value if d.HasField("dim_value") else d.dim_param for d in tt.shape.dim)
            static_ok = len(dims) == len(t.shape) and all(
                isinstance(s, str) or d == s for d, s in zip(dims, t.shape))
            if not static_ok or _ONNX_DTYPES.get(tt.elem_type) != t.dtype:
                raise ArtifactError(f"{path}: {t.name} is {list(dims)} {_ONNX_DTYPES.get(tt.elem_type, tt.elem_type)} "
                                    f"in the graph, {manifest_path} says {list(t.shape)} {t.dtype}; re-export the model")
        check_build_record(proto, manifest, path, manifest_path)
        want_attrs = {"window": cfg.window, "num_heads": cfg.n_heads, "num_kv_heads": cfg.n_kv_heads}
        for node in proto.graph.node:
            if node.domain != contract.OP_DOMAIN or node.op_type != contract.OP_NAME:
                continue
            for a in node.attribute:
                if a.name in want_attrs and a.i != want_attrs[a.name]:
                    raise ArtifactError(f"{manifest_path}: model config has {a.name} = {want_attrs[a.name]} but "
                                        f"{path.name}'s node {node.name or node.op_type} has {a.i}; the manifest "
                                        "was edited or belongs to another export: re-export the model")


def check_build_record(proto, manifest, path: Path, manifest_path: Path) -> None:
    meta = {p.key: p.value for p in proto.metadata_props}
    if "plt.export" not in meta:
        return  # exported before the record existed: checks 1-3 still apply
    built = json.loads(meta["plt.export"])
    have = {"config": manifest.config.to_dict(), "max_batch": manifest.max_batch, "max_seq": manifest.max_seq}
    for key in ("max_batch", "max_seq"):
        if built[key] != have[key]:
            raise ArtifactError(f"{manifest_path}: {key} is {have[key]}, {path.name} was built for {built[key]}; "
                                "the manifest was edited: re-export the model (or restore the manifest)")
    for field, value in built["config"].items():
        if have["config"].get(field) != value:
            raise ArtifactError(f"{manifest_path}: model config {field} is {have['config'].get(field)!r}, "
                                f"{path.name} was built for {value!r}; the manifest was edited: re-export the model")
