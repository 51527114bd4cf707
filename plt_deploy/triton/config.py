"""config.pbtxt for the PLT Python-backend model: written from one table, checked by Triton's own proto.

The inputs and outputs follow Triton's generate extension (`/v2/models/NAME/generate` and
`generate_stream` map the request's JSON keys onto inputs of the same name, and every output onto a
JSON key of the response): `text_input` is the prompt, the sampling fields are optional scalars,
`stream` says whether to send one response per token (generate_stream) or exactly one response
(generate, which refuses a second one). Every tensor is declared with `max_batch_size: 0`, so its
dims are the full shape the generate endpoint sends: [1] for a scalar JSON value, [-1] for a list.

`parameters` carry what model.py needs (paths relative to the version folder): the artifact, the
backend, the slot count, the longest context, and for TensorRT the plugin library and its sha256.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from ..errors import ArtifactError, InputError

# (name, Triton type, dims, optional); the generate extension's names, plus token ids and the reason.
INPUTS = (
    ("text_input", "TYPE_STRING", (1,), False),
    ("max_tokens", "TYPE_INT32", (1,), True),
    ("temperature", "TYPE_FP32", (1,), True),
    ("top_p", "TYPE_FP32", (1,), True),
    ("top_k", "TYPE_INT32", (1,), True),
    ("seed", "TYPE_INT64", (1,), True),
    ("stop", "TYPE_STRING", (-1,), True),  # one string or a list of strings
    ("stream", "TYPE_BOOL", (1,), True),
)
OUTPUTS = (
    ("text_output", "TYPE_STRING", (1,)),  # the text this response adds (all of it for generate)
    ("token_ids", "TYPE_INT32", (-1,)),  # the tokens this response adds
    ("finish_reason", "TYPE_STRING", (1,)),  # "" until the last response: stop | length | cancelled | error
)

BACKENDS = ("onnxruntime", "tensorrt", "torch")
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # a folder name and a URL part
DEFAULT_MAX_TOKENS = 64  # when a request has no max_tokens (as `plt-deploy generate --max-new-tokens`)


@dataclass(frozen=True)
class ModelParams:
    """What config.pbtxt's `parameters` block tells model.py."""

    artifact: str  # folder relative to the version folder: the export (onnxruntime, tensorrt) or checkpoint
    backend: str
    slots: int
    max_context: int | None = None  # None: the engine's default
    plugin: str | None = None  # TensorRT only: plugin library, relative to the version folder
    plugin_sha256: str | None = None
    checkpoint_sha256: str | None = None  # torch only: JSON {file: sha256} of config.json + model.safetensors
    threads: int | None = None

    def to_dict(self) -> dict[str, str]:
        return {k: str(v) for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict[str, str], where: str = "config.pbtxt") -> "ModelParams":
        """Parse the parameters (Triton hands them to model.py as strings)."""
        try:
            out = cls(artifact=d["artifact"], backend=d["backend"], slots=int(d["slots"]),
                      max_context=int(d["max_context"]) if d.get("max_context") else None,
                      plugin=d.get("plugin") or None, plugin_sha256=d.get("plugin_sha256") or None,
                      checkpoint_sha256=d.get("checkpoint_sha256") or None,
                      threads=int(d["threads"]) if d.get("threads") else None)
        except KeyError as exc:
            raise ArtifactError(f"{where}: parameter {exc} is missing; rewrite the repository with "
                                "`plt-deploy triton-repo`") from None
        except ValueError as exc:
            raise ArtifactError(f"{where}: bad parameter value ({exc})") from None
        if out.backend not in BACKENDS:
            raise ArtifactError(f"{where}: unknown backend {out.backend!r}; choose one of {', '.join(BACKENDS)}")
        if out.slots < 1:
            raise ArtifactError(f"{where}: slots must be >= 1, got {out.slots}")
        return out

    def checkpoint_hashes(self) -> dict[str, str] | None:
        return json.loads(self.checkpoint_sha256) if self.checkpoint_sha256 else None


def _dims(dims: tuple[int, ...]) -> str:
    return "[ " + ", ".join(str(d) for d in dims) + " ]"


def _quote(s: str) -> str:
    return json.dumps(s)  # a JSON string literal is a valid protobuf text-format string


def render_config(name: str, params: ModelParams) -> str:
    """The config.pbtxt text of model `name`."""
    kind = "KIND_GPU" if params.backend == "tensorrt" else "KIND_CPU"
    lines = ["# Written by `plt-deploy triton-repo`; model.py reads the parameters below.",
             f"name: {_quote(name)}", 'backend: "python"', "max_batch_size: 0",
             "model_transaction_policy { decoupled: true }", "input ["]
    lines += [",\n".join(f"  {{ name: {_quote(n)} data_type: {t} dims: {_dims(d)}{' optional: true' if o else ''} }}"
                         for n, t, d, o in INPUTS)]
    lines += ["]", "output ["]
    lines += [",\n".join(f"  {{ name: {_quote(n)} data_type: {t} dims: {_dims(d)} }}" for n, t, d in OUTPUTS)]
    lines += ["]",
              "# One instance owns the engine; the engine's slots batch the requests (no Triton batching).",
              f"instance_group [ {{ count: 1 kind: {kind} }} ]"]
    for key, value in params.to_dict().items():
        lines.append(f"parameters {{ key: {_quote(key)} value: {{ string_value: {_quote(value)} }} }}")
    return "\n".join(lines) + "\n"


def model_config_pb2():
    """Triton's `model_config_pb2` as tritonclient ships it.

    `tritonclient.grpc` imports the whole gRPC client first (grpcio, python-rapidjson); when those
    are missing the generated module is loaded from its file, which needs only protobuf.
    """
    try:
        from tritonclient.grpc import model_config_pb2 as pb2

        return pb2
    except (ImportError, RuntimeError):
        pass
    import importlib.util
    import sys

    spec = importlib.util.find_spec("tritonclient")
    if spec is None or not spec.submodule_search_locations:
        from ..errors import BackendUnavailable

        raise BackendUnavailable("tritonclient is not installed; pip install 'plt-deploy[triton]'")
    name = "plt_deploy_triton_model_config_pb2"
    if name in sys.modules:
        return sys.modules[name]
    path = f"{list(spec.submodule_search_locations)[0]}/grpc/model_config_pb2.py"
    mod_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    sys.modules[name] = module
    return module


def parse_config(text: str, where: str = "config.pbtxt"):
    """Parse config.pbtxt into Triton's ModelConfig message; an unknown field or bad value is an ArtifactError."""
    from google.protobuf import text_format

    pb2 = model_config_pb2()
    try:
        return text_format.Parse(text, pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise ArtifactError(f"{where}: not a valid Triton model config ({exc})") from None


def check_model_name(name: str) -> str:
    """A Triton model name: a folder of the repository and the /v2/models/NAME part of the URL."""
    if not MODEL_NAME.match(name):
        raise InputError(f"--name {name!r}: use letters, digits, '_', '-', '.' (it is a folder and a URL part)")
    return name
