"""The serving engine: continuous batching of requests over the slots of one decoder session.

No HTTP here. `Engine.submit` queues a request and returns its handle (`EngineRequest`); a
background thread runs steps. One step (docs/serving.md explains the scheduler):
  1. requests cancelled since the last step give their slots back;
  2. waiting requests take free slots, oldest first; a request whose prompt starts with a prefix
     in the prefix cache loads that state into its slot (`DecoderSession.load_slot`);
  3. chunked prefill: the step's token budget (`max_step_tokens`) minus one token per decoding
     row goes to the prompts still being prefilled, oldest first, as chunks extending their
     slots (`DecoderSession.extend`; other rows untouched). A chunk ends at the prompt's last
     prefix-cache block boundary, where the slot's state is saved. A prompt whose last chunk ran
     samples its first token;
  4. one decode of ALL slots at once (static shapes: a free row decodes an empty sequence at
     position 0 and is reset after the step; rows still being prefilled are held: their state
     is put back), every row at its own position;
  5. every decoding row's next token is sampled in one batched pass where the logits are
     (sampler.sample_rows: each row its own SamplingParams and seed, the same tokens as
     `generate.sample`); each request streams its token id and frees its slot at a stop token
     or its length.
Detokenization and stop strings run on the reader's side (`EngineRequest._render`, in the
iterator / asyncio iterator), not on the engine thread; a stop string found there ends the
request like a cancel (the slot is freed at the next step, finish_reason "stop").
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Callable

import torch

from ..backends.base import Backend
from ..errors import InputError, PLTError
from ..generate import SamplingParams, TextStream, pad_prompts
from .prefix_cache import DEFAULT_BLOCK, PrefixCache
from .sampler import sample_rows
from .scheduler import SlotPool, plan_chunks


DEFAULT_STEP_TOKENS = 128  # scripts/prefill-bench.py: small plt-2 on ORT CPU, a 2000-token prompt beside 7
# streams: budget 128 stalls them 3.9x (p99 between tokens) with time to first token 0.90x of one whole prefill


class QueueFullError(PLTError):
    """The waiting queue holds max_queue requests: retry later (HTTP 429)."""


class EngineStoppedError(PLTError):
    """The engine is shutting down and admits no new requests (HTTP 503)."""


class ContextLengthError(InputError):
    """The prompt, or the prompt and max_tokens, do not fit the context; `param` names which (HTTP 400)."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


@dataclass
class TokenEvent:
    token_id: int | None  # None on events that carry no token (cancelled, error, stop-string flush)
    text: str  # text this event adds (incrementally decoded, stop strings removed)
    finish_reason: str | None = None  # "stop" | "length" | "cancelled" | "error" on the last event
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens served from the prefix cache


class EngineRequest:
    """One request: its prompt and params, and the handle its caller reads events from."""

    def __init__(self, prompt_ids: list[int], params: SamplingParams, request_id: str | None, decode):
        self.id = request_id or uuid.uuid4().hex
        self.prompt_ids = list(prompt_ids)
        self.params = params
        self.generator = torch.Generator().manual_seed(params.seed) if params.seed is not None else None
        self.text = TextStream(decode, params.stop_strings)
        self.stop_tokens = set(params.stop_tokens)
        self.generated: list[int] = []
        self.slot: int | None = None
        self.n_cached = 0  # prompt tokens in the slot so far (chunked prefill)
        self.save_at: tuple[int, ...] = ()  # prompt lengths where its state goes to the prefix cache
        self.cached_tokens = 0  # of which from the prefix cache
        self.finish_reason: str | None = None
        self.cancelled = False
        self.reader_end: TokenEvent | None = None  # the reader ended r (stop string, detokenizer error)
        self.cancel_step: int | None = None  # engine step count when cancel() was called
        self.t_arrival = time.monotonic()
        self.t_admitted: float | None = None
        self.t_last_token: float | None = None
        self._events: deque[TokenEvent] = deque()
        self._cond = threading.Condition()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._on_cancel: Callable[[EngineRequest], None] | None = None  # the engine's hook

    # -- caller side -----------------------------------------------------------------------------
    def cancel(self) -> None:
        """Stop this request; its slot is freed at the next step boundary."""
        if self.cancelled:
            return
        self.cancelled = True
        if self._on_cancel is not None:
            self._on_cancel(self)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def __iter__(self):
        """Blocking iterator of TokenEvents, ending after the one with a finish_reason."""
        while True:
            with self._cond:
                while not self._events:
                    self._cond.wait()
                ev = self._events.popleft()
            ev = self._render(ev)  # outside the lock: the engine thread never waits on a decode
            yield ev
            if ev.finish_reason is not None:
                return

    async def aiter(self):
        """asyncio iterator of TokenEvents (the same events as iterating the handle)."""
        loop, flag = asyncio.get_running_loop(), asyncio.Event()
        with self._cond:
            self._waiters.append((loop, flag))
        try:
            while True:
                with self._cond:
                    ev = self._events.popleft() if self._events else None
                    if ev is None:
                        flag.clear()
                if ev is None:
                    await flag.wait()
                    continue
                ev = self._render(ev)
                yield ev
                if ev.finish_reason is not None:
                    return
        finally:
            with self._cond:
                self._waiters.remove((loop, flag))

    def _render(self, ev: TokenEvent) -> TokenEvent:
        """The reader's side of an engine event (token id only): its text, detokenized here and
        not on the engine thread, with stop strings applied. A stop string (or a detokenizer
        error) ends the request: the engine is told (as a cancel) and frees the slot at its next
        step; tokens it made after the stop are never read, and this event's usage counts stop
        at the stop string's token."""
        tok = ev.token_id
        if tok is None or self.reader_end is not None:  # cancelled / error: no text
            return ev
        try:
            if ev.finish_reason == "stop" and tok in self.stop_tokens:
                ev.text = self.text.flush()
                return ev
            text, hit = self.text.push(tok)
            ev.text = text
            if ev.finish_reason is not None and not hit:  # length
                ev.text += self.text.flush()
        except Exception as exc:  # noqa: BLE001  (a bug or an edge in one request's text: it ends)
            ev = TokenEvent(None, "", "error", error=f"generation failed: {type(exc).__name__}: {exc}",
                            prompt_tokens=ev.prompt_tokens, completion_tokens=ev.completion_tokens,
                            cached_tokens=ev.cached_tokens)
            hit = False
        if hit:
            ev.finish_reason = "stop"
        if ev.finish_reason in ("stop", "error"):
            self.reader_end = ev
            if self.finish_reason is None:
                self.cancel()
            else:  # the engine had finished r already (at its length): the reader's reason holds
                self.finish_reason = ev.finish_reason
        return ev

    # -- engine side -----------------------------------------------------------------------------
    def _emit(self, ev: TokenEvent) -> None:
        ev.prompt_tokens, ev.completion_tokens = len(self.prompt_ids), len(self.generated)
        ev.cached_tokens = self.cached_tokens
        with self._cond:
            self._events.append(ev)
            self._cond.notify_all()
            waiters = list(self._waiters)
        for loop, flag in waiters:
            try:
                loop.call_soon_threadsafe(flag.set)
            except RuntimeError:  # that loop is closed: its reader is gone
                pass


class Engine:
    """S slots of one decoder session on any backend; see the module docstring for a step."""

    def __init__(self, backend: Backend, tokenizer, slots: int = 4, max_context: int | None = None, max_queue: int = 64,
                 max_step_tokens: int | None = None, prefix_cache_mb: float = 256,
                 prefix_block: int = DEFAULT_BLOCK, model_name: str = "plt", metrics=None):
        if slots < 1 or max_queue < 0 or prefix_cache_mb < 0:
            raise InputError(f"need slots >= 1, max_queue >= 0, prefix_cache_mb >= 0 "
                             f"(got {slots}, {max_queue}, {prefix_cache_mb})")
        if max_step_tokens is None:  # docs/serving.md: the chunk size against decode stalls, measured
            max_step_tokens = max(DEFAULT_STEP_TOKENS, 2 * slots)
        if max_step_tokens < slots:  # a step must fit every decoding row and leave a prefill token
            raise InputError(f"--max-step-tokens {max_step_tokens} must be at least --slots {slots} (one token per "
                             "decoding slot, the rest for prompt chunks)")
        limit = backend.max_seq
        if max_context is None:
            from . import default_max_context

            max_context = default_max_context(limit)
        if not 2 <= max_context <= limit:
            raise InputError(f"max_context {max_context} must be in [2, {limit}] ({backend.max_seq_source})")
        self.backend, self.tokenizer, self.model_name = backend, tokenizer, model_name
        self.slots, self.max_context, self.max_queue = slots, max_context, max_queue
        self.max_step_tokens = max_step_tokens
        self.prefix_cache = PrefixCache(int(prefix_cache_mb * 2**20), prefix_block) if prefix_cache_mb else None
        self.metrics = metrics
        self.pad_id = getattr(tokenizer, "pad_id", 0) or 0
        backend.limits.check(slots, max_context, "--slots", "--max-context")  # names the flags, before allocating
        self.session = backend.start(slots, max_context)  # here, so that a session too big fails at once
        self.ready = False
        self.steps = 0
        self.load_error: str | None = None
        self._pool = SlotPool(slots)
        self._waiting: deque[EngineRequest] = deque()
        self._running: dict[int, EngineRequest] = {}  # slot -> request
        self._cond = threading.Condition()
        self._stopping = False
        self._cancel_all = False
        self._thread: threading.Thread | None = None
        self.cancel_lags: deque[int] = deque(maxlen=256)  # steps from cancel() to the slot being free

    # -- public API ------------------------------------------------------------------------------
    def start(self) -> "Engine":
        """Start the step loop in a background thread (it warms the session up first)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="plt-engine", daemon=True)
            self._thread.start()
        return self

    def wait_ready(self, timeout: float | None = None) -> bool:
        end = None if timeout is None else time.monotonic() + timeout
        while not self.ready and self.load_error is None and (end is None or time.monotonic() < end):
            time.sleep(0.01)
        if self.load_error is not None:
            raise PLTError(self.load_error)
        return self.ready

    def check_request(self, n_prompt: int, params: SamplingParams) -> None:
        """InputError if the request cannot be served (the message names the numbers)."""
        params.validate()
        if n_prompt < 1:
            raise InputError("the prompt is empty: it needs at least one token")
        if n_prompt > self.max_context or (n_prompt == self.max_context and params.max_new_tokens):
            raise ContextLengthError(f"the prompt of {n_prompt} tokens leaves no room in the context of "
                                     f"{self.max_context} tokens{self._context_hint()}", "prompt")
        if n_prompt + params.max_new_tokens > self.max_context:
            raise ContextLengthError(f"prompt of {n_prompt} tokens + max_tokens {params.max_new_tokens} = "
                                     f"{n_prompt + params.max_new_tokens} exceeds the context of {self.max_context} "
                                     f"tokens{self._context_hint()}", "max_tokens")

    def _context_hint(self) -> str:
        """Where the context limit comes from, when the model allows more (the server's setting)."""
        limit = self.backend.max_seq
        return f" (the server's --max-context; the model allows up to {limit})" if limit > self.max_context else ""

    def submit(self, prompt_ids: list[int], params: SamplingParams, request_id: str | None = None) -> EngineRequest:
        """Queue a request; raises InputError (too long, bad params), QueueFullError, EngineStoppedError."""
        self.check_request(len(prompt_ids), params)
        req = EngineRequest(prompt_ids, params, request_id, self.tokenizer.decode)
        req._on_cancel = self._on_cancel
        if params.max_new_tokens == 0:
            req.finish_reason = "length"
            req._emit(TokenEvent(None, "", "length"))
            return req
        with self._cond:
            if self._stopping:
                raise EngineStoppedError("the server is shutting down; no new requests")
            free = self.slots - len(self._running)  # the first `free` waiting requests take a slot at the next step
            if len(self._waiting) + 1 > max(free, 0) + self.max_queue:
                raise QueueFullError(f"every slot is taken and the waiting queue is full ({self.max_queue} "
                                     "requests); retry later")
            self._waiting.append(req)
            self._cond.notify_all()
        return req

    def close(self, cancel_running: bool = False) -> None:
        """Admit no new requests (EngineStoppedError) and return at once: the running and waiting
        ones finish (or, with cancel_running, end "cancelled" at the next step), then the loop ends."""
        with self._cond:
            self._stopping = True
            self._cancel_all = self._cancel_all or cancel_running
            self._cond.notify_all()

    def stop(self, cancel_running: bool = False, timeout: float | None = None) -> None:
        """Stop admission; finish (or cancel) the running and waiting requests; end the loop."""
        self.close(cancel_running)
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():  # out of time: cancel what is left
                with self._cond:
                    self._cancel_all = True
                    self._cond.notify_all()
                self._thread.join(10.0)
        self.ready = False

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def busy(self) -> bool:
        """Whether requests are running or waiting."""
        with self._cond:
            return bool(self._running or self._waiting)

    def stats(self) -> dict:
        with self._cond:
            running = list(self._running.values())
            waiting = len(self._waiting)
        cached = sum(r.n_cached + len(r.generated) for r in running)
        pc = self.prefix_cache
        return {"slots": self.slots, "slots_in_use": self._pool.in_use, "running": len(running), "waiting": waiting,
                "kv_cache_usage": cached / (self.slots * self.max_context), "steps": self.steps,
                "max_context": self.max_context, "ready": self.ready, "stopping": self._stopping,
                "prefix_cache_usage": pc.usage if pc is not None else 0.0,
                "prefix_cache_entries": len(pc) if pc is not None else 0}

    # -- the loop --------------------------------------------------------------------------------
    def _on_cancel(self, req: EngineRequest) -> None:
        req.cancel_step = self.steps
        self._wake()

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _run(self) -> None:
        try:
            self._warm_up()
        except Exception as exc:  # noqa: BLE001  (reported through /health and wait_ready)
            self.load_error = f"engine failed to start: {exc}"
            return
        self.ready = True
        while True:
            with self._cond:
                while not (self._waiting or self._running or self._stopping):
                    self._cond.wait()
                if self._cancel_all:
                    for r in [*self._running.values(), *self._waiting]:
                        r.cancelled = True
                if self._stopping and not self._waiting and not self._running:
                    return
            try:
                self._step()
            except Exception as exc:  # noqa: BLE001  (a bug must not hang every stream: end them, go on)
                self._fail_all(f"engine step failed: {type(exc).__name__}: {exc}")

    def _fail_all(self, message: str) -> None:
        with self._cond:
            reqs = [*self._running.values(), *self._waiting]
            self._waiting.clear()
        for r in reqs:
            if not r.done:
                self._finish(r, TokenEvent(None, "", "error", error=message))
        try:
            self.session = self.backend.start(self.slots, self.max_context)
        except Exception as exc:  # noqa: BLE001
            self.load_error = f"engine could not restart its session: {exc}"

    def _warm_up(self) -> None:
        """One prefill and one decode, so the first request does not pay for lazy initialisation."""
        s = self.session
        s.prefill_slots([0], torch.tensor([[self.pad_id]]), torch.tensor([1]))
        s.decode(torch.full((self.slots,), self.pad_id, dtype=torch.int64))
        s.reset_slots(list(range(self.slots)))

    def _step(self) -> None:
        t0 = time.monotonic()
        self._drop_cancelled()
        with self._cond:
            joining = []
            while self._waiting and self._pool.free:  # slots first; the token budget paces the prefill
                r = self._waiting.popleft()
                r.slot = self._pool.take()
                r.t_admitted = time.monotonic()
                self._running[r.slot] = r
                joining.append(r)
        for r in joining:
            if self.metrics:
                self.metrics.on_admit(r)
            self._reuse_prefix(r)
        prefilling = [r for r in self._running.values() if not r.generated]
        if prefilling:
            self._prefill(prefilling)
        if any(r.generated for r in self._running.values()):
            self._decode()
        self.steps += 1
        if self.metrics:
            self.metrics.on_step(time.monotonic() - t0, self.stats())

    def _reuse_prefix(self, r: EngineRequest) -> None:
        """Load the longest cached prefix of r's prompt into its slot (prefix cache hit)."""
        if self.prefix_cache is None:
            return
        pc = self.prefix_cache
        hit = pc.lookup(r.prompt_ids)
        if self.metrics:
            self.metrics.on_prefix_lookup(len(r.prompt_ids), hit[0] if hit else 0)
        if hit is not None:
            self.session.load_slot(r.slot, hit[1])
            r.n_cached = r.cached_tokens = hit[0]
        # saved where it leaves the blocks of an earlier prompt or of one in flight (prefix_cache.shared)
        # and at its own end
        with self._cond:
            others = [o.prompt_ids for o in (*self._running.values(), *self._waiting) if o is not r]
        r.save_at = tuple(sorted({p for p in (pc.shared(r.prompt_ids, others), pc.boundary(len(r.prompt_ids)))
                                  if p > r.n_cached}))

    def _drop_cancelled(self) -> None:
        with self._cond:
            gone = [r for r in self._waiting if r.cancelled]
            for r in gone:
                self._waiting.remove(r)
            gone += [r for r in self._running.values() if r.cancelled]
        for r in gone:
            if r.reader_end is not None:  # the reader found a stop string (EngineRequest._render)
                self._finish(r, TokenEvent(None, "", r.reader_end.finish_reason, error=r.reader_end.error))
                continue
            if r.slot is not None and r.cancel_step is not None:
                self.cancel_lags.append(self.steps - r.cancel_step)
            self._finish(r, TokenEvent(None, "", "cancelled"))

    def _prefill(self, prefilling: list[EngineRequest]) -> None:
        """This step's prompt chunks (scheduler.plan_chunks), in one extend when they fit one padded
        batch; requests whose prompt is complete sample their first token. An error fails only the
        requests of the failed call; the other rows are intact."""
        pc = self.prefix_cache

        def stop_at(r):  # the next point where r's state is saved, if the cache still wants it
            return next((p for p in r.save_at if p > r.n_cached and pc.wants(r.prompt_ids, p)), None)
        n_decode = sum(1 for r in self._running.values() if r.generated)
        chunks = plan_chunks(sorted(prefilling, key=lambda r: r.t_arrival), self.max_step_tokens - n_decode,
                             lambda r: (r.n_cached, len(r.prompt_ids)), stop_at)
        if not chunks:
            return
        width = max(n for _, _, n in chunks)
        groups = [chunks] if all(start + width <= self.max_context for _, start, _ in chunks) else [[c] for c in chunks]
        done, done_logits = [], []
        for group in groups:
            tokens, lengths = pad_prompts([r.prompt_ids[start:start + n] for r, start, n in group], self.pad_id)
            try:
                logits = self.session.extend([r.slot for r, _, _ in group], tokens, lengths,
                                             torch.tensor([start for _, start, _ in group]))  # [k, V]
            except Exception as exc:  # noqa: BLE001  (only these requests fail; the other rows are intact)
                for r, _, _ in group:
                    self._finish(r, TokenEvent(None, "", "error", error=f"prefill failed: {exc}"))
                continue
            for i, (r, start, n) in enumerate(group):
                r.n_cached = start + n
                if r.n_cached in r.save_at and pc.wants(r.prompt_ids, r.n_cached):
                    pc.store(r.prompt_ids, r.n_cached, self.session.save_slot(r.slot, r.n_cached))
                if r.n_cached == len(r.prompt_ids):
                    done.append(r)
                    done_logits.append(logits[i])
        if done:
            self._sample_and_emit(done, torch.stack(done_logits))

    def _decode(self) -> None:
        tokens = torch.full((self.slots,), self.pad_id, dtype=torch.int64)  # [S]; free rows decode padding
        held = []  # rows in the middle of their prompt: their state is put back after the step
        for slot, r in self._running.items():
            if r.generated:
                tokens[slot] = r.generated[-1]
            else:
                held.append(slot)
        try:
            logits = self.session.decode(tokens, hold=held)  # [S, V]
        except Exception as exc:  # noqa: BLE001  (the whole batch failed: end its requests, start clean)
            for r in list(self._running.values()):
                self._finish(r, TokenEvent(None, "", "error", error=f"decode failed: {exc}"))
            self.session = self.backend.start(self.slots, self.max_context)
            return
        self.session.reset_slots(self._pool.free_ids())
        running = [r for r in self._running.values() if r.generated]
        self._sample_and_emit(running, logits[torch.tensor([r.slot for r in running])])

    def _sample_and_emit(self, reqs: list[EngineRequest], logits: torch.Tensor) -> None:
        """logits [k, V], row i for reqs[i]: sample every row in one batched pass (sampler.py),
        where the logits are; only the [k] ids come to the host. Then stream and finish. A row
        with NaN/inf logits, or an error while streaming one request, ends that request only."""
        now = time.monotonic()
        finite = torch.isfinite(logits).all(dim=-1)  # [k]; sample() refuses NaN rows, greedy too
        ok = finite.tolist()
        for i, r in enumerate(reqs):
            if not ok[i]:
                self._finish(r, TokenEvent(None, "", "error", error="the model produced NaN or infinite logits"))
        keep = [i for i in range(len(reqs)) if ok[i]]
        if not keep:
            return
        rows = logits if len(keep) == len(reqs) else logits[torch.tensor(keep, device=logits.device)]
        try:
            ids = sample_rows(rows, [reqs[i].params for i in keep], [reqs[i].generator for i in keep]).tolist()
        except Exception as exc:  # noqa: BLE001  (a bug in sampling: these requests end, the engine goes on)
            for i in keep:
                self._finish(reqs[i], TokenEvent(None, "", "error", error=f"generation failed: {type(exc).__name__}: {exc}"))
            return
        for tok, i in zip(ids, keep):
            r = reqs[i]
            try:
                self._advance(r, tok, now)
            except Exception as exc:  # noqa: BLE001  (a bug or an edge in one request's text)
                if not r.done:
                    self._finish(r, TokenEvent(None, "", "error",
                                               error=f"generation failed: {type(exc).__name__}: {exc}"))

    def _advance(self, r: EngineRequest, tok: int, now: float) -> None:
        """r's next token `tok`: stream its id (the reader detokenizes: EngineRequest._render),
        finish r on a stop token or at max_new_tokens."""
        r.generated.append(tok)
        if self.metrics:
            self.metrics.on_token(r, now)
        r.t_last_token = now
        reason = "stop" if tok in r.stop_tokens else "length" if len(r.generated) >= r.params.max_new_tokens else None
        if reason is not None:
            self._finish(r, TokenEvent(tok, "", reason))
        else:
            r._emit(TokenEvent(tok, ""))

    def _finish(self, r: EngineRequest, ev: TokenEvent) -> None:
        with self._cond:
            if r.slot is not None and self._running.get(r.slot) is r:
                del self._running[r.slot]
                self._pool.release(r.slot)
                if self.session is not None:
                    self.session.reset_slots([r.slot])
        r.finish_reason = ev.finish_reason
        r._emit(ev)
        if self.metrics:
            self.metrics.on_finish(r, time.monotonic())
