"""A float export folder -> a quantized one (`plt-deploy export --model EXPORT --weights int4`).

The same pass as `export --model CHECKPOINT --weights ...` (export/quantize.py) applied to graphs
already traced, so one trace serves fp32, int8 and int4 (what the benchmarks do). Written like any
export: a temporary folder renamed into place, the manifest last; a quantized source is refused
(quantizing twice compounds the rounding error).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import ArtifactError, InputError
from . import manifest as manifest_lib
from .quantize import WeightSpec, check_quantizable, quantize_graph


def quantize_export(src: str | Path, out: str | Path, spec: WeightSpec, force: bool = False, log=None) -> Path:
    """Quantize the float export `src` into `out`; returns `out`. Nothing is written on an error."""
    import onnx

    from .exporter import save_onnx
    from ..output_folder import check_replaceable, claim_output, publish, temporary_folder

    src, out = Path(src), Path(out)
    m = manifest_lib.read_manifest(src)
    if m.quantized:
        raise InputError(f"{src}: already quantized ({m.weights['format']}, block {m.weights['block_size']}); "
                         "quantize from the float checkpoint or a float export")
    if src.resolve() == out.resolve():
        raise InputError(f"--out {out} is the source export; write the quantized export to another folder")
    if src.resolve() in out.resolve().parents:  # it would become part of the source (triton-repo copies it)
        raise InputError(f"--out {out} is inside the source export {src}; write the quantized export beside it")
    spec = check_quantizable(m.config, spec, log)
    def check():  # under the lock, and again at the swap
        check_replaceable(out, "export", manifest_lib.MANIFEST_FILE, force, sources=[src],
                          owned=manifest_lib.owned_names)

    with claim_output(out, log=log):
        check()
        tmp = temporary_folder(out)
        try:
            data = dict(m.data)
            counts, graphs = {}, {}
            for name, entry in data["graphs"].items():
                proto = onnx.load(str(m.graph_path(name)))
                counts[name] = quantize_graph(proto, spec, where=f"{src / entry['file']}",
                                              tokens=m.graphs[name].one("tokens").name)
                files = save_onnx(proto, tmp / entry["file"])
                graphs[name] = {**entry, "file": files[0], "external_data": files[1:]}
            for f in src.iterdir():  # the tokenizer and anything else that is not a graph or the manifest
                listed = f.name in data["files"] and not any(f.name in (g["file"], *g.get("external_data", []))
                                                             for g in data["graphs"].values())
                if f.is_file() and listed:
                    shutil.copyfile(f, tmp / f.name)
            data.pop("files", None)
            data.update(graphs=graphs, weights={**spec.to_manifest(counts), "quantized_from": str(src)})
            manifest_lib.write_manifest(tmp, data)
            manifest_lib.read_manifest(tmp)  # the result loads like any export
            publish(tmp, out, recheck=check)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out
