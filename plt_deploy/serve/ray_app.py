"""The same HTTP app as a Ray Serve deployment: N replicas, each with its own engine and slots.

    plt-deploy serve --model DIR --backend onnxruntime --replicas 2            # local Ray on 127.0.0.1
    plt-deploy serve ... --replicas 2 --max-replicas 8                         # autoscaling 2..8
    plt-deploy serve ... --replicas 4 --ray-address ray://head:10001           # an existing cluster

or from Python: `serve.run(deployment(...).bind(), route_prefix="/")` with `deployment` below.
Ray's HTTP proxy spreads requests over the replicas; every response names its replica
(`X-Replica-Id` header, `system_fingerprint`), and each replica's /metrics carries its id in the
`replica` label. A user who outgrows one machine adds Ray nodes, not code.
"""

from __future__ import annotations

import signal
import sys
import threading

from ray import serve

# Per replica process: the engine and settings PLTReplica.__init__ built, read by the app builder
# (Ray calls the builder on the replica right after __init__).
_REPLICA: dict = {}


def _build_app():
    from .app import build_app

    return build_app(_REPLICA["engine"], _REPLICA["settings"], manage_engine=True)


@serve.ingress(_build_app)
class PLTReplica:
    """One replica: loads the engine (lifespan starts and stops it with the replica)."""

    def __init__(self, engine_options: dict, settings_options: dict):
        from . import load_engine
        from .app import ServerSettings
        from .metrics import Metrics

        replica = serve.get_replica_context().replica_id.unique_id
        engine = load_engine(**engine_options)
        engine.metrics = Metrics(engine.model_name, replica=replica)
        engine.start()  # warm before Ray routes requests here (the app's lifespan only stops it)
        engine.wait_ready(600)
        _REPLICA.update(engine=engine, settings=ServerSettings(**settings_options, replica_id=replica))

    def check_health(self):
        """Ray's health probe: a replica whose engine failed to start is replaced."""
        engine = _REPLICA.get("engine")
        if engine is not None and engine.load_error:
            raise RuntimeError(engine.load_error)


def deployment(replicas: int = 1, max_replicas: int | None = None, cpus_per_replica: float = 1.0,
               engine_options: dict | None = None, settings_options: dict | None = None):
    """The bound Ray Serve application: fixed `replicas`, or autoscaling replicas..max_replicas
    (target: one replica's slots busy)."""
    engine_options = dict(engine_options or {})
    opts = {"ray_actor_options": {"num_cpus": cpus_per_replica}, "name": "plt",
            "max_ongoing_requests": max(1, engine_options.get("slots", 4) + engine_options.get("max_queue", 64))}
    if max_replicas and max_replicas > replicas:
        opts["autoscaling_config"] = {"min_replicas": replicas, "max_replicas": max_replicas,
                                      "target_ongoing_requests": engine_options.get("slots", 4)}
    else:
        opts["num_replicas"] = replicas
    return serve.deployment(PLTReplica, **opts).bind(engine_options, settings_options or {})


def run_ray(model: str, replicas: int = 1, max_replicas: int | None = None, ray_address: str | None = None,
            ray_cpus: int | None = None, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
            max_body_bytes: int = 1 << 20, max_tokens_limit: int | None = None, **engine_options) -> int | None:
    """Start (or join) Ray, run the deployment behind Ray's HTTP proxy, block until SIGTERM/SIGINT,
    then shut Serve and the local Ray down; returns that signal's number (as serve_forever does)."""
    import ray

    from .app import api_key_from_env

    if ray_address:
        ray.init(address=ray_address, log_to_driver=False)
    else:  # a local instance: loopback only, no dashboard, a bounded number of CPUs
        ray.init(num_cpus=ray_cpus or max(replicas, max_replicas or 0), include_dashboard=False, _node_ip_address="127.0.0.1",
                 log_to_driver=False, configure_logging=False)
    stop, stopped_by = threading.Event(), []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _: (stopped_by.append(signum), stop.set()))
    try:
        serve.start(http_options={"host": host, "port": port})
        settings = {"api_key": api_key_from_env(api_key), "max_body_bytes": max_body_bytes,
                    "max_tokens_limit": max_tokens_limit}
        app = deployment(replicas, max_replicas, engine_options=dict(model_dir=model, **engine_options),
                         settings_options=settings)
        serve.run(app, name="plt", route_prefix="/", blocking=False)
        where = f"port {port} of the Ray cluster's HTTP proxies" if ray_address else f"http://{host}:{port}"
        print(f"ready on {where} ({replicas} Ray Serve replica{'s' if replicas > 1 else ''})", file=sys.stderr,
              flush=True)
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()
    return stopped_by[0] if stopped_by else None
