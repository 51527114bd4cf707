"""Triton Python-backend model serving a PLT model (copied to REPO/NAME/1/model.py by `plt-deploy triton-repo`).

Thin on purpose: the checks, the request parsing and the streaming live in plt_deploy.triton.runtime
(the server's Python needs plt-deploy installed). Each request runs on its own thread, so
execute() returns at once and the engine's slots batch concurrent requests; every token goes out
through the request's response sender, the last response carries the FINAL flag, a cancelled
request (client gone) frees its slot, and bad input comes back as a Triton error response.
"""

import json
import threading
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from plt_deploy.errors import PLTError
from plt_deploy.triton.runtime import MetricsPump, Served, instance_device


def _input(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def _response(chunk):
    if chunk.error is not None:
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(chunk.error))
    return pb_utils.InferenceResponse(output_tensors=[
        pb_utils.Tensor("text_output", np.array([chunk.text.encode("utf-8")], dtype=np.object_)),
        pb_utils.Tensor("token_ids", np.array(chunk.token_ids, dtype=np.int32)),
        pb_utils.Tensor("finish_reason", np.array([(chunk.finish_reason or "").encode()], dtype=np.object_)),
    ])


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        try:  # KIND_GPU: one instance per GPU, each on the device Triton names in args
            self.served = Served.load(config, Path(args["model_repository"]) / args["model_version"],
                                      device=instance_device(args))
        except PLTError as exc:  # one line in the server log; the model stays not ready
            raise pb_utils.TritonModelException(str(exc)) from None
        labels = {"model": config["name"]}
        # The families must stay referenced: a collected family removes its metrics.
        self._families = [
            pb_utils.MetricFamily(name="plt_slots_in_use", description="PLT engine slots holding a request",
                                  kind=pb_utils.MetricFamily.GAUGE),
            pb_utils.MetricFamily(name="plt_requests_waiting", description="Requests queued for a free slot",
                                  kind=pb_utils.MetricFamily.GAUGE),
        ]
        slots, waiting = (f.Metric(labels=labels) for f in self._families)
        finished = pb_utils.MetricFamily(name="plt_requests_finished_total", description="Requests ended, by reason",
                                         kind=pb_utils.MetricFamily.COUNTER)
        self._families.append(finished)
        self._finished = {r: finished.Metric(labels={**labels, "reason": r})
                          for r in ("stop", "length", "cancelled", "error")}

        def update(stats):
            slots.set(float(stats.get("slots_in_use", 0)))
            waiting.set(float(stats.get("waiting", 0)))

        self.metrics = MetricsPump(self.served.engine, update)
        self.threads = set()
        self.lock = threading.Lock()

    def execute(self, requests):
        for request in requests:
            thread = threading.Thread(target=self._serve, args=(request,), daemon=True)
            with self.lock:
                self.threads.add(thread)
            thread.start()
        return None  # decoupled: responses go through each request's sender

    def _serve(self, request):
        sender = request.get_response_sender()
        ended = []

        def emit(chunk):
            if chunk.final:
                ended.append(True)
                self._finished[chunk.finish_reason or "error"].increment(1)
            if chunk.finish_reason == "cancelled":  # nobody is listening: just close the request
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                return
            flags = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if chunk.final else 0
            sender.send(_response(chunk), flags=flags)

        try:
            self.served.handle(lambda name: _input(request, name), emit, request.is_cancelled)
        except Exception as exc:  # a bug, not bad input: still end the request with an error
            if ended:
                return
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"internal error: {exc}")),
                        flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        finally:
            with self.lock:
                self.threads.discard(threading.current_thread())

    def finalize(self):
        self.metrics.close()
        self.served.close()
        with self.lock:
            threads = list(self.threads)
        for thread in threads:
            thread.join(timeout=5.0)
