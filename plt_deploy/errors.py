"""User-facing errors. The CLI prints these as one line and exits non-zero; anything else is a bug."""


class PLTError(Exception):
    """Base class for errors caused by user input (files, flags, configs)."""


class ConfigError(PLTError):
    """An impossible or malformed model configuration."""


class CheckpointError(PLTError):
    """A checkpoint folder that is missing, corrupt or does not match its config."""


class ArtifactError(PLTError):
    """An exported artifact (ONNX, manifest, engine) that is missing, damaged or mismatched."""


class BackendUnavailable(PLTError):
    """A runtime (ONNX Runtime provider, TensorRT, a GPU) that this machine does not have."""


class InputError(PLTError):
    """A request the model cannot serve (prompt too long, empty batch, bad sampling values)."""


class ModelError(PLTError):
    """The model computed something unusable (NaN or infinite logits)."""
