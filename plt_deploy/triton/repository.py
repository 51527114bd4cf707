"""Write a Triton model repository for a PLT export or checkpoint (`plt-deploy triton-repo`).

    REPO/
      README.md                  the tritonserver command and curl examples
      plt-deploy-repo.json       marker: this folder was written by triton-repo (what --force may replace)
      NAME/
        config.pbtxt             python backend, decoupled, generate-extension I/O, parameters
        1/
          model.py               copy of plt_deploy/triton/triton_model.py
          artifact/              the export (manifest + hashes) or checkpoint, copied
          plugins/libplt_trt_plugins.so   TensorRT only: the plugin the engines were built with

Everything is checked first (artifact.check_artifact: unknown backend, bad hash, missing plugin or
engines; a checkpoint is loaded as the torch backend will load it), then written into a temporary
folder beside REPO and renamed into place. An existing REPO is replaced only with force=True and
only when it holds MARKER (this command wrote it); the model is never inside REPO.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..errors import InputError
from ..output_folder import check_replaceable, claim_output, swap_in, temporary_folder
from ..serve import default_max_context
from .artifact import check_artifact, check_backend
from .config import ModelParams, check_model_name, parse_config, render_config

VERSION = "1"
ARTIFACT_DIR = "artifact"
PLUGIN_DIR = "plugins"
MODEL_TEMPLATE = Path(__file__).with_name("triton_model.py")
MARKER = "plt-deploy-repo.json"  # written into every repository: what --force may replace
WRITTEN_BY = "plt-deploy triton-repo"  # the marker's "written_by"


def write_repository(model: str | Path, out: str | Path, backend: str = "onnxruntime", slots: int = 4,
                     name: str = "plt", force: bool = False, plugin: str | Path | None = None,
                     max_context: int | None = None, threads: int | None = None) -> Path:
    """Library entry point of `plt-deploy triton-repo`; returns REPO."""
    check_backend(backend)
    check_model_name(name)
    if slots < 1:
        raise InputError(f"--slots must be >= 1, got {slots}")
    if plugin is not None and backend != "tensorrt":
        raise InputError(f"--plugin is for --backend tensorrt, not {backend}")
    out, model = Path(out), Path(model)

    def check():  # now, under the lock, and again at the swap
        check_replaceable(out, "triton-repo", MARKER, force, sources=[model, plugin], owned=owned_names)

    check()
    checked = check_artifact(model, backend, plugin=plugin)
    if backend == "torch":  # what the torch backend's load refuses (truncated file, extra tensor), refused now
        from ..checkpoint import load_checkpoint

        load_checkpoint(model)
    from ..serve.chat import load_serve_tokenizer

    config = checked.limits.config  # the tokenizer (and chat template) the model's load reads, refused now
    load_serve_tokenizer(Path(model), config.vocab_size, config)
    # what serve and Triton's model load refuse (Engine: backend.limits), refused now; memory is the server's
    checked.limits.check(slots, max_context or default_max_context(checked.limits.max_seq), "--slots",
                         "--max-context" if max_context else "the default --max-context", memory=False)
    params = ModelParams(artifact=ARTIFACT_DIR, backend=backend, slots=slots, max_context=max_context,
                         plugin=f"{PLUGIN_DIR}/{checked.plugin.name}" if checked.plugin else None,
                         plugin_sha256=checked.plugin_sha256,
                         checkpoint_sha256=json.dumps(checked.checkpoint_sha256, sort_keys=True)
                         if checked.checkpoint_sha256 else None, threads=threads)
    config_text = render_config(name, params)
    _validate_if_possible(config_text, out / name / "config.pbtxt")

    out.parent.mkdir(parents=True, exist_ok=True)
    with claim_output(out, command="triton-repo"):
        check()
        tmp = temporary_folder(out)
        try:
            version = tmp / name / VERSION
            shutil.copytree(model, version / ARTIFACT_DIR, ignore=shutil.ignore_patterns("__pycache__", ".*.tmp"))
            if checked.plugin is not None:
                (version / PLUGIN_DIR).mkdir()
                shutil.copy2(checked.plugin, version / params.plugin)
            shutil.copy2(MODEL_TEMPLATE, version / "model.py")
            (tmp / name / "config.pbtxt").write_text(config_text)
            (tmp / "README.md").write_text(readme_text(out.resolve(), name, params))
            (tmp / MARKER).write_text(json.dumps({"written_by": WRITTEN_BY, "model": name,
                                                  "backend": backend}) + "\n")
            swap_in(tmp, out, recheck=check)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out


def owned_names(repo: Path) -> set[str]:
    """What `triton-repo` wrote into REPO (output_folder.check_replaceable: --force replaces only
    these): its marker, README.md, and in the model folder the marker names config.pbtxt and
    version 1's model.py, artifact/ and plugins/ (a user's NAME/2/ or notes there are not ours), and
    the __pycache__ Python writes beside model.py when Triton loads it (reported: --force was refused
    once the repository had been served). A marker that is not ours owns nothing."""
    try:
        data = json.loads((Path(repo) / MARKER).read_text())
        model = data.get("model") if data.get("written_by") == WRITTEN_BY else None
    except (OSError, ValueError, AttributeError):
        model = None
    if not isinstance(model, str) or not model or model in (".", "..") or "/" in model:
        return set()
    version = f"{model}/{VERSION}"
    return {MARKER, "README.md", f"{model}/config.pbtxt", f"{version}/model.py", f"{version}/{ARTIFACT_DIR}",
            f"{version}/{PLUGIN_DIR}", f"{version}/__pycache__"}


def _validate_if_possible(text: str, where: Path) -> None:
    """Parse with Triton's own ModelConfig when tritonclient is installed (the tests always do)."""
    from ..errors import BackendUnavailable

    try:
        parse_config(text, str(where))
    except BackendUnavailable:
        pass


def readme_text(repo: Path, name: str, params: ModelParams) -> str:
    gpu = params.backend == "tensorrt"
    plugin_note = (f" and loads the TensorRT plugin `{name}/1/{params.plugin}` with ctypes (RTLD_LOCAL) before the "
                   "engines" if params.plugin else "")
    return f"""# Triton model repository for a PLT model

Written by `plt-deploy triton-repo` (backend `{params.backend}`, {params.slots} slots). Model `{name}` is a
Python-backend model (`{name}/1/model.py`) that drives plt-deploy's slot engine on the copied
{"export" if params.backend != "torch" else "checkpoint"} in `{name}/1/{ARTIFACT_DIR}/`; see docs/triton.md in plt-deploy.

## Start the server

The Python that Triton's Python backend runs must have plt-deploy installed (the version that
wrote this folder){", TensorRT and a GPU" if gpu else ""}. The Python backend bundled in nvidia-pytriton 0.7
(Triton 2.51) also needs numpy < 2 in that Python: its stub expects numpy 1 (see docs/triton.md).

    tritonserver --model-repository {repo} --http-port 8000 --grpc-port 8001 --metrics-port 8002

Loading the model checks every file's sha256{plugin_note}; a failed check leaves the model not ready,
with a one-line reason in the server log and in `curl -s -X POST localhost:8000/v2/repository/index`.

## Requests (Triton's generate extension)

One response with the whole text:

    curl -s -X POST localhost:8000/v2/models/{name}/generate \\
      -d '{{"text_input": "Hello", "max_tokens": 32, "temperature": 0}}'

Server-sent events, one per token (`"stream": true` is required; the last event carries `finish_reason`):

    curl -s -N -X POST localhost:8000/v2/models/{name}/generate_stream \\
      -d '{{"text_input": "Hello", "max_tokens": 32, "stream": true}}'

Inputs: `text_input` (string), `max_tokens`, `temperature`, `top_p`, `top_k`, `seed`, `stop` (a
string or a list), `stream`. Outputs: `text_output`, `token_ids`, `finish_reason`. Closing the
connection cancels the request and frees its slot. Gauges `plt_slots_in_use` and
`plt_requests_waiting` are on the metrics port.
"""
