"""What the repository's model.py does, without Triton: load the shared slot engine from config.pbtxt's
parameters, turn a generate-extension request into a prompt and SamplingParams, and stream the
engine's TokenEvents out as Chunks.

model.py only converts between Triton's objects (input tensors, response senders, is_cancelled)
and these plain Python values, so all of this runs and is tested outside a server too.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import ArtifactError, InputError, PLTError
from .artifact import check_artifact
from .config import DEFAULT_MAX_TOKENS, ModelParams

READY_TIMEOUT_S = 600.0  # engine load + warm-up inside initialize()
CANCEL_POLL_S = 0.05  # how often is_cancelled() is asked for every running request


@dataclass
class Chunk:
    """One response: the text and tokens it adds; final is the last one (Triton's FINAL flag)."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # stop | length | cancelled | error (last chunk only)
    final: bool = False
    error: str | None = None  # a Triton error response instead of outputs


def failure(message: str) -> Chunk:
    return Chunk(finish_reason="error", final=True, error=message)


def params_from_model_config(model_config: dict, where: str = "config.pbtxt") -> ModelParams:
    """ModelParams from the JSON model config Triton passes to initialize()."""
    raw = {k: v.get("string_value", "") for k, v in (model_config.get("parameters") or {}).items()}
    return ModelParams.from_dict(raw, where)


def instance_device(args: dict) -> int | None:
    """The CUDA ordinal of this model instance from initialize()'s args, None for a CPU instance.

    Triton makes one instance per GPU for `instance_group [{kind: KIND_GPU}]` without `gpus` and tells
    each which one in args["model_instance_device_id"] (a string, with model_instance_kind "GPU")."""
    if str(args.get("model_instance_kind", "")).upper() != "GPU":
        return None
    raw = args.get("model_instance_device_id")
    try:
        return int(raw)
    except (TypeError, ValueError):
        raise ArtifactError(f"Triton passed model_instance_device_id={raw!r} for a GPU instance; expected a "
                            "CUDA device ordinal") from None


def load_trt_plugin(path: Path):
    """Load the G-SWA plugin library into the server's Python process, once (build.plugin.load_plugin:
    ctypes with RTLD_LOCAL; it registers itself and logs through TensorRT's logger)."""
    from ..build import availability
    from ..build.plugin import load_plugin

    return load_plugin(availability.require(), path)


def _values(array) -> list:
    return [] if array is None else np.asarray(array).reshape(-1).tolist()


def _one(array, name: str, cast, default):
    values = _values(array)
    if not values:
        return default
    if len(values) != 1:
        raise InputError(f"{name} must be a single value, got {len(values)}")
    try:
        return cast(values[0])
    except (TypeError, ValueError):
        raise InputError(f"{name}: {values[0]!r} is not a valid value") from None


def _text(value, name: str) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{name} is not valid UTF-8") from None
    return str(value)


@dataclass
class Request:
    prompt: str
    params: object  # plt_deploy.generate.SamplingParams
    stream: bool


def parse_request(get_input: Callable[[str], object], eos_id: int | None) -> Request:
    """Inputs by name (numpy arrays, None when absent) -> Request; bad values raise InputError."""
    from ..generate import SamplingParams

    if get_input("text_input") is None:
        raise InputError("text_input is required (the prompt)")
    prompt = _one(get_input("text_input"), "text_input", lambda v: _text(v, "text_input"), "")
    stop = tuple(_text(v, "stop") for v in _values(get_input("stop")))
    if any(not s for s in stop):
        raise InputError("stop strings must not be empty")
    seed = _one(get_input("seed"), "seed", int, None)
    params = SamplingParams(
        max_new_tokens=_one(get_input("max_tokens"), "max_tokens", int, DEFAULT_MAX_TOKENS),
        temperature=_one(get_input("temperature"), "temperature", float, 0.0),
        top_k=_one(get_input("top_k"), "top_k", int, 0),
        top_p=_one(get_input("top_p"), "top_p", float, 1.0),
        seed=seed,
        stop_tokens=(eos_id,) if eos_id is not None else (),  # EOS always stops, as in `plt-deploy generate`
        stop_strings=stop,
    )
    params.validate()
    return Request(prompt, params, bool(_one(get_input("stream"), "stream", bool, False)))


class Served:
    """The engine one Triton model instance drives, plus the thread that forwards cancellations."""

    def __init__(self, engine, params: ModelParams):
        self.engine, self.params = engine, params
        self._active: dict[int, tuple[object, Callable[[], bool]]] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._watcher = threading.Thread(target=self._watch_cancellations, name="plt-triton-cancel", daemon=True)
        self._watcher.start()

    @classmethod
    def load(cls, model_config: dict, version_dir: str | Path, ready_timeout: float = READY_TIMEOUT_S,
             device: int | None = None) -> "Served":
        """Check the artifact against config.pbtxt, load the TensorRT plugin, start the engine on `device`
        (the instance's GPU, instance_device(args); None: the current device)."""
        version_dir = Path(version_dir)
        params = params_from_model_config(model_config, str(version_dir.parent / "config.pbtxt"))
        checked = check_artifact(version_dir / params.artifact, params.backend,
                                 plugin=version_dir / params.plugin if params.plugin else None,
                                 plugin_sha256=params.plugin_sha256, checkpoint_sha256=params.checkpoint_hashes())
        if checked.plugin is not None:
            load_trt_plugin(checked.plugin)
        from ..serve import load_engine

        options = {"max_context": params.max_context} if params.max_context else {}
        engine = load_engine(str(version_dir / params.artifact), backend=params.backend, slots=params.slots,
                             threads=params.threads, plugin=str(checked.plugin) if checked.plugin else None,
                             verify_hashes=False, device=device, **options)  # check_artifact hashed every file
        engine.start()
        try:
            ready = engine.wait_ready(ready_timeout)  # PLTError with the load error, if any
        except BaseException:
            engine.stop(cancel_running=True, timeout=5)
            raise
        if not ready:
            engine.stop(cancel_running=True, timeout=5)
            raise ArtifactError(f"{version_dir / params.artifact}: the engine was not ready after "
                                f"{ready_timeout:.0f} s")
        return cls(engine, params)

    def _watch_cancellations(self) -> None:
        while not self._closed.wait(CANCEL_POLL_S):
            with self._lock:
                active = list(self._active.values())
            for handle, is_cancelled in active:
                try:
                    if is_cancelled():
                        handle.cancel()
                except Exception:  # noqa: BLE001  (a request Triton already released)
                    handle.cancel()

    def handle(self, get_input: Callable[[str], object], emit: Callable[[Chunk], None],
               is_cancelled: Callable[[], bool] = lambda: False) -> None:
        """Serve one request to the end: emit one Chunk per token (stream) or one Chunk, always a final one."""
        from ..serve.engine import QueueFullError

        tok = self.engine.tokenizer
        try:
            req = parse_request(get_input, getattr(tok, "eos_id", None))
            handle = self.engine.submit(tok.encode(req.prompt), req.params)
        except (PLTError, QueueFullError) as exc:
            emit(failure(str(exc)))
            return
        key = id(handle)
        with self._lock:
            self._active[key] = (handle, is_cancelled)
        texts: list[str] = []
        ids: list[int] = []
        cancel_sent = False
        try:
            for ev in handle:
                if ev.finish_reason is None and not cancel_sent and is_cancelled():
                    handle.cancel()  # the watcher also covers requests still waiting for a slot
                    cancel_sent = True
                if ev.finish_reason == "error":
                    emit(failure(ev.error or "generation failed"))
                    return
                new = [int(ev.token_id)] if ev.token_id is not None else []
                if req.stream:
                    if ev.text or new or ev.finish_reason:
                        emit(Chunk(ev.text, new, ev.finish_reason, final=ev.finish_reason is not None))
                else:
                    texts.append(ev.text)
                    ids += new
                    if ev.finish_reason:
                        emit(Chunk("".join(texts), ids, ev.finish_reason, final=True))
                if ev.finish_reason:
                    return
            emit(failure("the engine ended the stream without a finish reason"))
        finally:
            with self._lock:
                self._active.pop(key, None)

    def close(self, timeout: float = 10.0) -> None:
        self._closed.set()
        self.engine.stop(cancel_running=True, timeout=timeout)
        self._watcher.join(timeout=1.0)


class MetricsPump:
    """Copies engine.stats() into Triton gauges every `period` seconds (model.py owns the gauges)."""

    def __init__(self, engine, update: Callable[[dict], None], period: float = 0.1):
        self.engine, self.update, self.period = engine, update, period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="plt-triton-metrics", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self.update(self.engine.stats())
            except Exception:  # noqa: BLE001  (metrics must never take the model down)
                pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)
