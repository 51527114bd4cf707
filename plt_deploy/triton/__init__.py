"""Triton Inference Server support: a model repository whose Python-backend model drives the slot engine.

repository.write_repository writes it (config.config.pbtxt from one I/O table, artifact checks in
artifact.py), triton_model.py is the model.py it ships, runtime.py is that model's logic, and
local_server.py runs the Triton server bundled in nvidia-pytriton on loopback (tests, local use).
"""
