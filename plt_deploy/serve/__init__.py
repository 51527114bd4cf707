"""Serving: a continuous-batching engine (engine.py), an OpenAI-compatible HTTP server (app.py),
Prometheus metrics (metrics.py), Ray Serve replicas (ray_app.py) and a load test (loadtest.py)."""

from __future__ import annotations

from pathlib import Path

DEFAULT_MAX_CONTEXT = 256  # an engine's (and so a Triton model's) context when none is given...


def default_max_context(model_limit: int) -> int:
    """...unless the model's own limit (an export's --max-seq) is smaller."""
    return min(DEFAULT_MAX_CONTEXT, model_limit)


def load_engine(model_dir: str | Path, backend: str = "torch", slots: int = 4, max_context: int | None = None,
                max_queue: int = 64, max_step_tokens: int | None = None, prefix_cache_mb: float = 256,
                threads: int | None = None,
                plugin: str | None = None, provider: str | None = None, model_name: str | None = None,
                metrics=None, ort_spinning: bool | None = False, verify_hashes: bool = True,
                device: int | None = None):
    """An Engine over `model_dir` (checkpoint folder for torch, export folder for onnxruntime/tensorrt).

    Not started: call `engine.start()` (warms up, then steps in a background thread).
    ort_spinning (onnxruntime): False by default here. Between two decode runs the engine and the
    HTTP server need the CPU; ONNX Runtime's busy-waiting intra-op threads would hold it
    (docs/serving.md measures the difference). None keeps ONNX Runtime's default.
    verify_hashes=False skips re-hashing an export the caller has just verified (Triton's model load).
    device (tensorrt): the CUDA ordinal to run on (Triton: the instance's model_instance_device_id).
    """
    from ..backends import load_backend
    from .chat import load_serve_tokenizer
    from .engine import Engine

    options = {"threads": threads, "verify_hashes": verify_hashes}
    if plugin:
        options["plugin"] = plugin
    if provider:
        options["provider"] = provider
    if backend == "onnxruntime":
        options["spinning"] = ort_spinning
    if device is not None:
        options["device"] = device
    be = load_backend(backend, str(model_dir), **options)
    tok = load_serve_tokenizer(getattr(be, "tokenizer_dir", model_dir), be.config.vocab_size, be.config)
    return Engine(be, tok, slots=slots, max_context=max_context, max_queue=max_queue,
                  max_step_tokens=max_step_tokens, prefix_cache_mb=prefix_cache_mb,
                  model_name=model_name or Path(model_dir).name,
                  metrics=metrics)


__all__ = ["DEFAULT_MAX_CONTEXT", "default_max_context", "load_engine"]
