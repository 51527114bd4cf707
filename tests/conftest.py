"""Shared fixtures: ONNX exports are slow (dynamo tracing), so the suite makes each once."""

import signal

import pytest

# Tests send SIGINT to the CLI's subprocesses (Ctrl-C paths, server shutdowns). A harness that starts
# the suite as a background job of a non-interactive shell has SIGINT ignored, and an ignored signal
# stays ignored in every child; restore Python's handler so the children get the default.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

EXPORT_MODES = ("plt", "looped", "vanilla")


@pytest.fixture(scope="session")
def tiny_exports(tmp_path_factory):
    """mode -> (checkpoint folder, export folder) of the tiny preset, seed 1, max batch 4."""
    from plt_deploy.checkpoint import init_checkpoint
    from plt_deploy.export.exporter import export_model

    root = tmp_path_factory.mktemp("exports")
    out = {}
    for mode in EXPORT_MODES:
        ck = init_checkpoint("tiny", root / f"ck_{mode}", mode=mode, seed=1)
        # Only the plt export runs the exporter's own ORT-vs-torch validation (tested once is enough).
        out[mode] = (ck, export_model(ck, root / f"ex_{mode}", max_batch=4, progress=False, validate=(mode == "plt")))
    return out
