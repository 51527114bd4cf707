"""Every Prometheus metric of the server, defined once (vLLM's names, prefix `plt:`).

The engine calls the on_* hooks from its step loop; the server exposes `render()` at /metrics.
Each Metrics object has its own registry, so several engines in one process (tests, Ray
replicas on one node) never collide; every series carries `model_name` and `replica` labels.
"""

from __future__ import annotations

PREFIX = "plt:"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                   10.0, 20.0, 40.0, 80.0)


class Metrics:
    def __init__(self, model_name: str, replica: str = "0"):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes etc. (the load test reads RSS)
        labels = ["model_name", "replica"]
        self.labels = {"model_name": model_name, "replica": replica}
        r = self.registry

        def gauge(name, doc):
            return Gauge(PREFIX + name, doc, labels, registry=r).labels(**self.labels)

        def counter(name, doc):
            return Counter(PREFIX + name, doc, labels, registry=r).labels(**self.labels)

        def hist(name, doc):
            return Histogram(PREFIX + name, doc, labels, buckets=LATENCY_BUCKETS, registry=r).labels(**self.labels)

        self.running = gauge("num_requests_running", "Requests in a slot, decoding.")
        self.waiting = gauge("num_requests_waiting", "Requests queued for a slot.")
        self.slots_in_use = gauge("num_slots_in_use", "Slots holding a request.")
        self.kv_usage = gauge("kv_cache_usage_perc", "Fraction of the slots' KV positions holding tokens (0..1).")
        self.prompt_tokens = counter("prompt_tokens", "Prompt tokens prefilled.")
        self.generation_tokens = counter("generation_tokens", "Tokens generated.")
        self._success = Counter(PREFIX + "request_success", "Finished requests by finish reason.",
                                [*labels, "finished_reason"], registry=r)
        self.ttft = hist("time_to_first_token_seconds", "Arrival to first token.")
        self.itl = hist("inter_token_latency_seconds", "Time between two tokens of one request.")
        self.e2e = hist("e2e_request_latency_seconds", "Arrival to last token.")
        self.queue_time = hist("request_queue_time_seconds", "Arrival to joining a slot.")
        self.prefix_queries = counter("prefix_cache_queries", "Prompt tokens looked up in the prefix cache.")
        self.prefix_hits = counter("prefix_cache_hits", "Prompt tokens found in the prefix cache (state reused).")
        self.prefix_usage = gauge("prefix_cache_usage_perc", "Fraction of --prefix-cache-mb in use (0..1).")
        self.step_time = hist("decode_step_seconds", "One engine step (prompt chunks + one decode of all slots).")

    # -- hooks called by the engine loop -----------------------------------------------------------
    def on_admit(self, req) -> None:
        self.queue_time.observe(req.t_admitted - req.t_arrival)
        self.prompt_tokens.inc(len(req.prompt_ids))

    def on_token(self, req, now: float) -> None:
        self.generation_tokens.inc()
        if req.t_last_token is None:
            self.ttft.observe(now - req.t_arrival)
        else:
            self.itl.observe(now - req.t_last_token)

    def on_finish(self, req, now: float) -> None:
        self._success.labels(**self.labels, finished_reason=req.finish_reason).inc()
        self.e2e.observe(now - req.t_arrival)

    def on_prefix_lookup(self, queried: int, hit: int) -> None:
        self.prefix_queries.inc(queried)
        self.prefix_hits.inc(hit)

    def on_step(self, seconds: float, stats: dict) -> None:
        self.step_time.observe(seconds)
        self.set_state(stats)

    def set_state(self, stats: dict) -> None:
        """Gauges from Engine.stats() (after each step, and when /metrics is read)."""
        self.running.set(stats["running"])
        self.waiting.set(stats["waiting"])
        self.slots_in_use.set(stats["slots_in_use"])
        self.kv_usage.set(stats["kv_cache_usage"])
        self.prefix_usage.set(stats.get("prefix_cache_usage", 0.0))

    def render(self) -> tuple[bytes, str]:
        """(body, content type) of the Prometheus text format."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
