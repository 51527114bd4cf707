"""The serving engine: batched equals alone (torch and ONNX Runtime), scheduling, limits, cancellation."""

import json
import threading
import time

import pytest
import torch

from plt_deploy.backends.ort_backend import OrtBackend
from plt_deploy.backends.torch_backend import load as load_torch
from plt_deploy.errors import CheckpointError, InputError
from plt_deploy.generate import SamplingParams, TextStream, generate
from plt_deploy.serve.chat import load_serve_tokenizer
from plt_deploy.serve.engine import Engine, QueueFullError
from plt_deploy.serve.scheduler import plan_chunks
from plt_deploy.tokenizer import ByteTokenizer

# 10 prompts of different lengths (1..23 tokens) and output lengths, over 4 slots.
PROMPTS = [[1 + (7 * i + 3 * j) % 250 for j in range(n)] for i, n in enumerate([5, 1, 23, 9, 14, 3, 17, 7, 11, 2])]
NEW = [12, 20, 6, 16, 9, 24, 5, 13, 18, 8]


def run_staggered(engine: Engine, prompts, params_list, arrive_at_steps):
    """Submit request i once the engine has run arrive_at_steps[i] steps; collect the tokens of each."""
    outs: list = [None] * len(prompts)
    threads = []

    def read(i, handle):
        events = list(handle)
        outs[i] = ([e.token_id for e in events if e.token_id is not None], events[-1])

    for i, (p, params) in enumerate(zip(prompts, params_list)):
        deadline = time.monotonic() + 60
        while engine.steps < arrive_at_steps[i] and time.monotonic() < deadline:
            time.sleep(0.0005)
        h = engine.submit(p, params)
        t = threading.Thread(target=read, args=(i, h))
        t.start()
        threads.append(t)
    for t in threads:
        t.join(120)
    return outs


@pytest.fixture(scope="module")
def backends(tmp_path_factory):
    """The tiny plt preset with its matrices scaled x6 (exported for ONNX Runtime, max batch 4).

    Random weights at their initial scale mostly repeat the last prompt token, so a mixed-up
    cache row would go unnoticed; scaled up, every greedy token depends on the whole context.
    """
    from plt_deploy.checkpoint import save_checkpoint
    from plt_deploy.checkpoint import init_checkpoint
    from plt_deploy.export.exporter import export_model

    root = tmp_path_factory.mktemp("serve_engine")
    model = load_torch(init_checkpoint("tiny", root / "init", mode="plt", seed=3)).model
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "embed" not in name:
                p.mul_(6.0)
    ck = save_checkpoint(model, root / "sharp")
    ex = export_model(ck, root / "export", max_batch=4, max_seq=64, progress=False, validate=False)
    return {"torch": load_torch(ck), "onnxruntime": OrtBackend(ex, spinning=False)}  # as plt-deploy serve runs it


@pytest.mark.parametrize("name", ["torch", "onnxruntime"])
def test_batched_equals_alone(backends, name):
    be = backends[name]
    alone = [generate(be, [p], SamplingParams(max_new_tokens=n))[0] for p, n in zip(PROMPTS, NEW)]
    assert sum(len(set(a)) for a in alone) > 3 * len(alone)  # outputs that depend on their context
    engine = Engine(be, ByteTokenizer(), slots=4, max_context=64, max_step_tokens=32).start()
    assert engine.wait_ready(60)
    arrivals = [0, 0, 1, 3, 4, 4, 7, 10, 12, 15]  # staggered: some join running batches, some wait for a slot
    outs = run_staggered(engine, PROMPTS, [SamplingParams(max_new_tokens=n) for n in NEW], arrivals)
    engine.stop(timeout=30)
    for i, (toks, last) in enumerate(outs):
        assert last.finish_reason == "length", (i, last)
        assert toks == alone[i], f"request {i}: batched {toks} != alone {alone[i]}"
    assert engine.steps > max(NEW)  # requests really overlapped and queued (more steps than the longest)
    assert engine.stats()["slots_in_use"] == 0


def test_sampling_with_seed_equals_generate(backends):
    be = backends["torch"]
    params = lambda s: SamplingParams(max_new_tokens=10, temperature=0.8, top_k=20, top_p=0.9, seed=s)  # noqa: E731
    alone = [generate(be, [p], params(i))[0] for i, p in enumerate(PROMPTS[:5])]
    engine = Engine(be, ByteTokenizer(), slots=4, max_context=64).start()
    engine.wait_ready(60)
    outs = run_staggered(engine, PROMPTS[:5], [params(i) for i in range(5)], [0, 0, 2, 2, 5])
    engine.stop(timeout=30)
    assert [o[0] for o in outs] == alone


def test_stop_tokens_and_strings(backends):
    be = backends["torch"]
    free = generate(be, [PROMPTS[0]], SamplingParams(max_new_tokens=20))[0]
    tok = ByteTokenizer()
    engine = Engine(be, tok, slots=2, max_context=64).start()
    engine.wait_ready(60)
    ev = list(engine.submit(PROMPTS[0], SamplingParams(max_new_tokens=20, stop_tokens=(free[4],))))
    assert [e.token_id for e in ev] == free[: free.index(free[4]) + 1] and ev[-1].finish_reason == "stop"
    text = tok.decode(free)
    stop = text[3:5] if len(text) >= 5 else None
    if stop:  # the same text-level rule in generate and in the engine
        ev = list(engine.submit(PROMPTS[0], SamplingParams(max_new_tokens=20, stop_strings=(stop,))))
        streamed = "".join(e.text for e in ev)
        assert streamed == text[: text.find(stop)] and ev[-1].finish_reason == "stop"
        gen = generate(be, [PROMPTS[0]], SamplingParams(max_new_tokens=20, stop_strings=(stop,)), decode=tok.decode)[0]
        assert [e.token_id for e in ev if e.token_id is not None] == gen
    engine.stop(timeout=30)


def test_stop_string_found_by_the_reader_frees_the_slot(backends):
    """Stop strings are applied on the reader's side: a reader that starts late (the engine ran
    ahead) still sees the stream end at the stop string, with usage counts up to its token; the
    engine is told and frees the slot, and the request finishes with "stop"."""
    be = backends["torch"]
    tok = ByteTokenizer()
    free = generate(be, [PROMPTS[0]], SamplingParams(max_new_tokens=40))[0]
    text = tok.decode(free)
    stop = text[3:5]
    assert len(text) >= 5 and stop
    gen = generate(be, [PROMPTS[0]], SamplingParams(max_new_tokens=40, stop_strings=(stop,)),
                   decode=tok.decode)[0]
    assert len(gen) < 40
    engine = Engine(be, tok, slots=2, max_context=64).start()
    assert engine.wait_ready(60)
    h = engine.submit(PROMPTS[0], SamplingParams(max_new_tokens=40, stop_strings=(stop,)))
    deadline = time.monotonic() + 60
    while len(h.generated) <= len(gen) and not h.done and time.monotonic() < deadline:
        time.sleep(0.01)  # let the engine run past the stop before anyone reads
    ev = list(h)
    assert [e.token_id for e in ev] == gen and ev[-1].finish_reason == "stop"
    assert "".join(e.text for e in ev) == text[: text.find(stop)]
    assert ev[-1].completion_tokens == len(gen) and ev[-1].prompt_tokens == len(PROMPTS[0])
    while not h.done and time.monotonic() < deadline:
        time.sleep(0.01)
    assert h.finish_reason == "stop" and engine.stats()["slots_in_use"] == 0
    engine.stop(timeout=30)


def test_text_stream_holds_partial_utf8_and_stop_prefixes():
    tok = ByteTokenizer()
    ts = TextStream(tok.decode, ("END",))
    deltas = [ts.push(b) for b in "hé EN! xEND tail".encode()]
    shown = "".join(d for d, _ in deltas)
    assert shown == "hé EN! x"  # "EN" held back until "!" showed it was not "END"; nothing after the stop
    assert [s for _, s in deltas].index(True) == len("hé EN! xEND".encode()) - 1
    assert "\ufffd" not in shown


def test_a_sequence_ending_inside_a_character_drops_it():
    """max_tokens cuts "é" (2 bytes) after its first byte: flush (the engine's reader side at
    finish "length", `generate --stream`) and visible_text (`generate`) give the text without U+FFFD."""
    from plt_deploy.generate import visible_text

    tok = ByteTokenizer()
    ids = list("ab\u00e9".encode())[:-1]  # a, b, the first byte of é
    ts = TextStream(tok.decode)
    shown = "".join(ts.push(t)[0] for t in ids) + ts.flush()
    assert shown == "ab" and ts.text == "ab" and visible_text(tok.decode, ids) == "ab"
    assert tok.decode(ids).endswith("\ufffd")  # what the decoder alone gives


def byte_fallback_decode():
    """decode of a SentencePiece-style tokenizer (byte-fallback BPE, as Llama and LoopCoder ship):
    unlike ByteTokenizer's, its decoder shows EACH byte of an incomplete character as a U+FFFD."""
    from tokenizers import Tokenizer, decoders, models

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{i:02X}>": 3 + i for i in range(256)}, "\u2581a": 259}
    t = Tokenizer(models.BPE(vocab, [], unk_token="<unk>", byte_fallback=True))
    t.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                   decoders.Strip(" ", 1, 0)])
    return lambda ids: t.decode(list(ids))


@pytest.mark.parametrize("end", ["length", "stop", "cancelled"])
def test_the_reader_drops_a_character_the_request_ended_inside(end):
    """The engine's reader side (EngineRequest._render) ends a request whose last tokens are 2 of the
    3 bytes of a character without them (the decoder alone gives two U+FFFD), at its length, at a
    stop token after them, or cancelled; `generate` (visible_text) gives the same text."""
    from plt_deploy.generate import visible_text
    from plt_deploy.serve.engine import EngineRequest, TokenEvent

    decode = byte_fallback_decode()
    ids = [259, 3 + 0xE4, 3 + 0xB8]  # "a", then the first 2 bytes of U+4E2D (E4 B8 AD)
    assert decode(ids) == "a\ufffd\ufffd" and decode(ids + [3 + 0xAD]) == "a\u4e2d"
    assert visible_text(decode, ids) == "a"
    r = EngineRequest([1], SamplingParams(max_new_tokens=3 if end == "length" else 9, stop_tokens=(2,)), None, decode)
    for t in ids[:-1]:
        r._emit(TokenEvent(t, ""))
    last = {"length": [TokenEvent(ids[-1], "", "length")],
            "stop": [TokenEvent(ids[-1], ""), TokenEvent(2, "", "stop")],
            "cancelled": [TokenEvent(ids[-1], ""), TokenEvent(None, "", "cancelled")]}[end]
    for ev in last:  # as Engine._finish: the request's reason is set before its last event goes out
        r.finish_reason = ev.finish_reason
        r._emit(ev)
    events = list(r)
    assert "".join(e.text for e in events) == "a" and events[-1].finish_reason == end


def test_limits_and_queue(backends):
    be = backends["torch"]
    engine = Engine(be, ByteTokenizer(), slots=1, max_context=32, max_queue=2)
    with pytest.raises(InputError, match="prompt of 30 tokens \\+ max_tokens 5 = 35 exceeds the context of 32 tokens "
                       f"\\(the server's --max-context; the model allows up to {be.max_seq}\\)"):
        engine.submit([1] * 30, SamplingParams(max_new_tokens=5))
    with pytest.raises(InputError, match="the prompt of 40 tokens leaves no room in the context of 32 tokens \\(the server"):
        engine.submit([1] * 40, SamplingParams(max_new_tokens=1))
    # not started: one request takes the free slot, two wait, the next is refused at once
    for _ in range(3):
        engine.submit([1, 2], SamplingParams(max_new_tokens=2))
    with pytest.raises(QueueFullError, match="queue is full"):
        engine.submit([1, 2], SamplingParams(max_new_tokens=2))
    engine.start()
    engine.stop(timeout=30)
    assert engine.stats()["waiting"] == 0
    # --max-queue 0: nothing waits, but every free slot still takes a request
    engine = Engine(be, ByteTokenizer(), slots=2, max_context=32, max_queue=0)
    reqs = [engine.submit([1, 2], SamplingParams(max_new_tokens=2)) for _ in range(2)]
    with pytest.raises(QueueFullError, match="queue is full \\(0 requests\\)"):
        engine.submit([1, 2], SamplingParams(max_new_tokens=2))
    engine.start()
    assert all(len(list(r)) >= 1 for r in reqs) and all(r.finish_reason == "length" for r in reqs)
    engine.stop(timeout=30)



@pytest.mark.parametrize("max_queue, admitted", [(1, 3), (0, 2)])
def test_a_running_engine_admits_its_free_slots_plus_max_queue(backends, max_queue, admitted):
    """--slots 2 on a running engine whose prefill is held (nothing finishes): of 6 requests, the 2
    that get a slot and max_queue more are admitted, the rest refused at once, however the engine's
    steps fall between the submissions; once they finish, the slots admit again."""
    engine = Engine(backends["torch"], ByteTokenizer(), slots=2, max_context=32, max_queue=max_queue).start()
    assert engine.wait_ready(60)
    gate, extend = threading.Event(), engine.session.extend

    def held_extend(*args, **kw):
        gate.wait(30)
        return extend(*args, **kw)
    engine.session.extend = held_extend
    params = SamplingParams(max_new_tokens=2)
    try:
        handles, refused = [], 0
        for _ in range(6):
            try:
                handles.append(engine.submit([1, 2], params))
            except QueueFullError:
                refused += 1
            time.sleep(0.01)  # the engine steps (and blocks in the held prefill) between submissions
        assert (len(handles), refused) == (admitted, 6 - admitted)
    finally:
        gate.set()
    assert all(list(h)[-1].finish_reason == "length" for h in handles)
    assert all(list(engine.submit([1, 2], params))[-1].finish_reason == "length" for _ in range(2))
    engine.stop(timeout=30)

def test_cancel_frees_slot_at_next_step(backends):
    be = backends["torch"]
    engine = Engine(be, ByteTokenizer(), slots=2, max_context=200).start()
    engine.wait_ready(60)
    h = engine.submit(PROMPTS[0], SamplingParams(max_new_tokens=150))
    it = iter(h)
    next(it), next(it)
    h.cancel()
    at = engine.steps
    rest = list(it)
    assert rest[-1].finish_reason == "cancelled"
    assert engine.stats()["slots_in_use"] == 0
    # freed at the next step boundary (events queued before cancel() depend on thread scheduling:
    # the engine's own count of steps from cancel() to the free slot is what must stay small)
    assert engine.cancel_lags[-1] <= 1 and engine.steps - at <= 2
    engine.stop(timeout=30)


def test_chunks_are_oldest_first_under_the_step_budget():
    # prompts as (tokens in the slot, prompt length), oldest first
    reqs = {"a": (0, 30), "b": (0, 5), "c": (10, 50), "d": (0, 3)}
    plan = lambda budget, stop=lambda r: None: [(r, s, n) for r, s, n in  # noqa: E731
                                                 plan_chunks(list(reqs), budget, reqs.get, stop)]
    assert plan(32) == [("a", 0, 30), ("b", 0, 2)]  # the budget runs out inside b: b gets 2 now
    assert plan(100) == [("a", 0, 30), ("b", 0, 5), ("c", 10, 40), ("d", 0, 3)]
    assert plan(0) == [("a", 0, 1)]  # a full step of decodes: the oldest prompt still moves
    # a chunk stops at the prefix-cache boundary of its prompt (the state is saved there)
    assert plan(100, lambda r: 16 if r == "a" else None)[0] == ("a", 0, 16)
    assert plan(100, lambda r: 16 if r == "c" else None)[2] == ("c", 10, 6)


@pytest.mark.parametrize("template, want", [
    ("{% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}{{ m.content }}"
     "{% if loop.index >= 2 %}{% break %}{% endif %}{% endfor %}", "Hi"),  # loop controls
    ("{{ strftime_now('%Y') }}", None),  # Llama 3's date line
    ("{{ {'b': 1, 'a': 2} | tojson }}", '{"b": 1, "a": 2}'),  # key order kept, as Hugging Face's tojson
    ([{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D{{ messages | length }}"}], "D2"),
    ("{% for m in messages %}{% generation %}{{ m.content }}{% endgeneration %}{% endfor %}", "SHi"),
])
def test_chat_templates_hugging_face_accepts(tmp_path, template, want):
    """Templates that transformers' apply_chat_template runs (reported: {% break %} answered 500 on every
    chat request, strftime_now 400, tojson sorted keys, a list of named templates was refused)."""
    import datetime

    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    got = load_serve_tokenizer(tmp_path, 259).apply_chat_template([{"role": "system", "content": "S"},
                                                                    {"role": "user", "content": "Hi"}])
    assert got == (want if want is not None else str(datetime.datetime.now().year))


def test_chat_template_that_does_not_compile_fails_at_load(tmp_path):
    (tmp_path / "chat_template.jinja").write_text("{% for m in messages %}{{ m.content }")
    with pytest.raises(CheckpointError, match="chat_template.jinja: the chat template does not compile"):
        load_serve_tokenizer(tmp_path, 259)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": [{"name": "x", "template": ""}]}))
    with pytest.raises(CheckpointError, match="none named 'default'"):
        load_serve_tokenizer(tmp_path, 259)


def test_chat_template_plain_and_checkpoint(tmp_path):
    tok = load_serve_tokenizer(tmp_path, 259)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert tok.apply_chat_template(msgs) == "system: Be brief.\nuser: Hi\nassistant:"
    (tmp_path / "tokenizer_config.json").write_text('{"chat_template": "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<bot>"}')
    assert load_serve_tokenizer(tmp_path, 259).apply_chat_template(msgs) == "<system>Be brief.<user>Hi<bot>"


def test_a_failing_prefill_ends_only_the_joining_request(backends):
    be = backends["torch"]
    want = generate(be, [PROMPTS[2]], SamplingParams(max_new_tokens=24))[0]
    engine = Engine(be, ByteTokenizer(), slots=2, max_context=64).start()
    engine.wait_ready(60)
    decode = engine.session.decode

    def slow_decode(tokens, hold=None):  # 5 ms a step, so the request is still running when the other joins
        time.sleep(0.005)
        return decode(tokens, hold)
    engine.session.decode = slow_decode
    running = engine.submit(PROMPTS[2], SamplingParams(max_new_tokens=24))
    it = iter(running)
    first = [next(it).token_id for _ in range(3)]
    real = engine.session.extend

    seen = []

    def broken(slots, tokens, lengths, start_pos):
        engine.session.extend = real  # fails once
        seen.append(running.done)
        raise RuntimeError("injected prefill failure")
    engine.session.extend = broken
    bad = list(engine.submit(PROMPTS[0], SamplingParams(max_new_tokens=5)))
    assert bad[-1].finish_reason == "error" and "injected prefill failure" in bad[-1].error
    rest = [e.token_id for e in it]
    assert seen == [False] and first + rest == want  # it was running, and never noticed
    ok = [e.token_id for e in engine.submit(PROMPTS[0], SamplingParams(max_new_tokens=5))]
    assert ok == generate(be, [PROMPTS[0]], SamplingParams(max_new_tokens=5))[0]
    engine.stop(timeout=30)


def test_context_beyond_the_export_names_its_max_seq(backends):
    be = backends["onnxruntime"]  # exported with --max-seq 64, the model's max_seq_len is 256
    assert be.max_seq == 64 and be.config.max_seq_len > 64
    with pytest.raises(InputError, match=r"max_context 65 must be in \[2, 64\] \(the export's --max-seq\)"):
        Engine(be, ByteTokenizer(), slots=1, max_context=65)
    with pytest.raises(InputError, match="exceeds the export's --max-seq of 64"):
        generate(be, [[1] * 60], SamplingParams(max_new_tokens=5))


def test_sampling_edges_and_fuzz_never_disturb_the_running_requests(backends):
    """Extreme sampling parameters (floats that round to 0 in fp32, huge ints, bools, NaN) submitted
    while greedy requests run: each is refused at submit (InputError) or ends normally, and the
    running requests produce the same tokens as alone. A temperature or top_p below ~1e-45 is greedy."""
    import random

    be = backends["torch"]
    long_params = SamplingParams(max_new_tokens=40)  # outlasts the ~15 steps of the requests below
    engine = Engine(be, ByteTokenizer(), slots=6, max_context=128).start()
    engine.wait_ready(60)
    tokens = lambda handle: [e.token_id for e in handle]  # noqa: E731
    alone = [tokens(engine.submit(p, long_params)) for p in PROMPTS[:2]]  # one at a time
    greedy3 = tokens(engine.submit(PROMPTS[3], SamplingParams(max_new_tokens=3)))
    assert greedy3 == generate(be, [PROMPTS[3]], SamplingParams(max_new_tokens=3))[0]
    running = [engine.submit(p, long_params) for p in PROMPTS[:2]]
    # the exact request of the report: temperature 1e-300 is greedy, top_p 1e-300 keeps the top token
    for kw in ({"temperature": 1e-300}, {"temperature": 5e-324}, {"temperature": 1.0, "top_p": 1e-300}):
        ev = list(engine.submit(PROMPTS[3], SamplingParams(max_new_tokens=3, **kw)))
        assert ev[-1].finish_reason == "length" and [e.token_id for e in ev] == greedy3, (kw, ev[-1])
    rng = random.Random(17)
    nan, inf = float("nan"), float("inf")
    values = {  # name: (accepted values, refused values); each is refused in about 1 request of 7
        "temperature": ([0.0, -0.0, 1e-300, 5e-324, 1e-45, 1e-40, 1e-38, 1e-8, 0.5, 1, 2.0, 1e38, 1e300],
                        [inf, -inf, nan, True, 10 ** 400, -1e-300, "1"]),
        "top_p": ([1e-300, 5e-324, 1e-45, 1e-40, 1e-8, 0.5, 0.9999999, 1.0, 1], [0.0, nan, inf, True, 1.0000001, -1]),
        "top_k": ([0, 1, 2, 259, 1 << 70, 10 ** 400], [-1, True, 2.0]),
        "seed": ([None, 0, -1, (1 << 63) - 1, -(1 << 63), 12345], [1 << 63, 1 << 64, -(1 << 63) - 1, True, 1.5]),
    }
    handles, refused = [], 0
    for _ in range(40):  # all queued at once: they run 4 at a time beside the 2 long requests
        kw = {k: rng.choice(bad if rng.random() < 0.15 else ok) for k, (ok, bad) in values.items()}
        params = SamplingParams(max_new_tokens=rng.choice([1, 2, 3]), **kw)
        try:
            handles.append((params, engine.submit(PROMPTS[rng.randrange(10)][:8], params)))
        except InputError:
            refused += 1
    # the long requests are still running while the fuzz is queued (the 3 edge requests above took
    # ~9 of their 40 steps); whether they outlast the fuzz itself depends on thread timing, not asserted
    assert not any(h.done for h in running)
    for params, handle in handles:
        last = list(handle)[-1]
        assert last.finish_reason == "length", (params, last)
    assert refused > 4 and len(handles) > 15, (refused, len(handles))
    for h, want in zip(running, alone):
        assert tokens(h) == want
    engine.stop(timeout=30)


def test_an_error_in_one_request_ends_that_request_only(backends):
    """An exception while sampling or finishing one request (here: its detokenizer, which runs on
    the reader's side) ends it with an error event and frees its slot; the other requests go on and
    produce the same tokens as alone."""
    be = backends["torch"]
    alone = [generate(be, [p], SamplingParams(max_new_tokens=12))[0] for p in PROMPTS[:3]]
    engine = Engine(be, ByteTokenizer(), slots=4, max_context=64)  # not started: all three join one step
    handles = [engine.submit(p, SamplingParams(max_new_tokens=12)) for p in PROMPTS[:3]]
    pushes = []

    def broken_push(token):
        pushes.append(token)
        if len(pushes) == 4:
            raise RuntimeError("injected detokenizer failure")
        return "", False
    handles[1].text.push = broken_push
    engine.start()
    bad = list(handles[1])
    assert bad[-1].finish_reason == "error" and "injected detokenizer failure" in bad[-1].error
    for i in (0, 2):
        ev = list(handles[i])
        assert ev[-1].finish_reason == "length" and [e.token_id for e in ev] == alone[i]
    assert engine.stats()["slots_in_use"] == 0 and engine.load_error is None
    engine.stop(timeout=30)


@pytest.mark.parametrize("name", ["torch", "onnxruntime"])
def test_chunked_prefill_beside_decoding_streams_equals_alone(backends, name):
    """A step budget of 6 tokens over 4 slots: long prompts are prefilled a few tokens per step while
    the other slots decode (their rows held in the decode step); every output equals its alone run."""
    be = backends[name]
    alone = [generate(be, [p], SamplingParams(max_new_tokens=n))[0] for p, n in zip(PROMPTS, NEW)]
    engine = Engine(be, ByteTokenizer(), slots=4, max_context=64, max_step_tokens=6, prefix_cache_mb=0).start()
    assert engine.wait_ready(60)
    outs = run_staggered(engine, PROMPTS, [SamplingParams(max_new_tokens=n) for n in NEW], [0, 0, 1, 3, 4, 4, 7, 10,
                                                                                          12, 15])
    engine.stop(timeout=30)
    for i, (toks, last) in enumerate(outs):
        assert toks == alone[i], f"request {i}: chunked {toks} != alone {alone[i]}"
    assert engine.steps > sum(len(p) for p in PROMPTS) / 6  # the prompts really went through in chunks


@pytest.mark.parametrize("name", ["torch", "onnxruntime"])
def test_prefix_cache_hit_gives_the_tokens_of_a_miss(backends, name):
    """A chat that grows turn by turn over a shared system prompt: from turn 2 on the prompt starts
    with the previous turn's saved prefix (cached_tokens > 0), and every turn's tokens equal those
    of an engine without the cache; the counters count the reused tokens."""
    from plt_deploy.serve.metrics import Metrics

    be = backends[name]
    system = [1 + (5 * j) % 240 for j in range(21)]
    turns, history = [], list(system)
    for t in range(4):
        history = history + [30 + t, 40 + t, 50 + t]
        turns.append(list(history))
        history = history + [60 + t] * 2  # the "reply" kept in the next prompt
    params = SamplingParams(max_new_tokens=6)
    results = {}
    for mb in (0, 8):
        engine = Engine(be, ByteTokenizer(), slots=2, max_context=64, prefix_cache_mb=mb, prefix_block=4)
        engine.metrics = Metrics("m")
        engine.start()
        assert engine.wait_ready(60)
        results[mb] = [list(engine.submit(p, params)) for p in turns]
        stats, body = engine.stats(), engine.metrics.render()[0].decode()
        engine.stop(timeout=30)
    miss, hit = ([[e.token_id for e in evs if e.token_id is not None] for evs in results[mb]] for mb in (0, 8))
    assert hit == miss
    cached = [evs[-1].cached_tokens for evs in results[8]]
    assert cached[0] == 0 and all(c >= len(turns[i - 1]) - 4 for i, c in enumerate(cached) if i), cached
    assert [evs[-1].cached_tokens for evs in results[0]] == [0] * 4
    assert stats["prefix_cache_entries"] >= 3 and 0 < stats["prefix_cache_usage"] <= 1
    hits = sum(cached)
    assert f'plt:prefix_cache_hits_total{{model_name="m",replica="0"}} {float(hits)}' in body
    assert f'plt:prefix_cache_queries_total{{model_name="m",replica="0"}} {float(sum(map(len, turns)))}' in body


@pytest.mark.parametrize("name", ["torch", "onnxruntime"])
def test_prefix_cache_serves_different_questions_over_one_system_prompt(backends, name):
    """The second question saves its state where it leaves the first one's blocks, so the third hits
    there (the system prompt's whole blocks); its tokens equal those of an engine without the cache."""
    be = backends[name]
    system = [1 + (7 * j) % 240 for j in range(22)]  # 5 whole blocks of 4, then 2 tokens
    questions = [system + [100 + q, 110 + q, 120 + q] for q in range(4)]
    params = SamplingParams(max_new_tokens=5)
    results = {}
    for mb in (0, 8):
        engine = Engine(be, ByteTokenizer(), slots=2, max_context=64, prefix_cache_mb=mb, prefix_block=4).start()
        assert engine.wait_ready(60)
        results[mb] = [list(engine.submit(p, params)) for p in questions]
        engine.stop(timeout=30)
    miss, hit = ([[e.token_id for e in evs if e.token_id is not None] for evs in results[mb]] for mb in (0, 8))
    assert hit == miss
    assert [evs[-1].cached_tokens for evs in results[8]] == [0, 0, 20, 20]



def test_prefix_cache_questions_arriving_together_save_their_shared_prefix(backends):
    """Four questions over one system prompt admitted in one step (none has stored a state yet): the
    shared blocks are saved from the prompts in flight, so a fifth question hits them (before: it
    only saved them itself); every token equals an engine's without the cache, and the hit is
    counted in plt:prefix_cache_hits_total."""
    from plt_deploy.serve.metrics import Metrics

    be = backends["torch"]
    system = [1 + (7 * j) % 240 for j in range(22)]  # 5 whole blocks of 4, then 2 tokens
    questions = [system + [100 + q, 110 + q, 120 + q] for q in range(5)]
    params = SamplingParams(max_new_tokens=4)
    results = {}
    for mb in (0, 8):
        engine = Engine(be, ByteTokenizer(), slots=4, max_context=64, prefix_cache_mb=mb, prefix_block=4,
                        metrics=Metrics("m"))
        together = [engine.submit(p, params) for p in questions[:4]]  # waiting before the loop starts
        engine.start()
        results[mb] = [list(h) for h in together] + [list(engine.submit(questions[4], params))]
        body = engine.metrics.render()[0].decode()
        engine.stop(timeout=30)
    miss, hit = ([[e.token_id for e in evs if e.token_id is not None] for evs in results[mb]] for mb in (0, 8))
    assert hit == miss
    assert [evs[-1].cached_tokens for evs in results[8]] == [0, 0, 0, 0, 20]
    assert 'plt:prefix_cache_hits_total{model_name="m",replica="0"} 20.0' in body

def test_prefix_cache_evicts_least_recently_used_within_its_bytes():
    from plt_deploy.backends.state import SlotState
    from plt_deploy.serve.prefix_cache import PrefixCache

    state = lambda n: SlotState(n, {"k": torch.zeros(n, dtype=torch.uint8)})  # noqa: E731  n bytes
    pc = PrefixCache(capacity_bytes=20, block=4)
    a, b, c = list(range(10)), list(range(50, 60)), list(range(100, 110))
    assert pc.boundary(len(a)) == 8 and pc.lookup(a) is None
    assert pc.store(a, 8, state(8)) and not pc.store(a, 8, state(8))  # stored once
    assert pc.store(b, 8, state(8)) and pc.bytes == 16
    assert pc.lookup(a + [1])[0] == 8  # a is now the most recent
    assert pc.store(c, 8, state(8)) and pc.bytes == 16 and pc.evictions == 1
    assert pc.lookup(b) is None and pc.lookup(a)[0] == 8 and pc.lookup(c)[0] == 8
    assert not pc.store(a, 6, state(6))  # not a block boundary
    assert pc.lookup(a[:8]) is None  # a prompt of exactly the prefix must keep a token to prefill
    assert pc.shared(a[:4] + [99] * 6) == 4 and pc.shared(b + [1]) == 0  # b was evicted: its blocks too
    fresh = PrefixCache(64, 4)  # prompts in flight: their common whole blocks, within the prompt's last boundary
    assert fresh.shared(list(range(20)), [list(range(10)) + [99], [5] * 30]) == 8 and fresh.shared(list(range(20))) == 0
    assert fresh.shared(list(range(9)), [list(range(20))]) == 8 and fresh.shared(list(range(8)), [list(range(20))]) == 4
    assert PrefixCache(16, 4).store(a, 8, state(8)) and not PrefixCache(4, 4).store(a, 8, state(8))


def test_prefix_cache_shared_with_prompts_in_flight_equals_the_plain_definition():
    """PrefixCache.shared(tokens, others) (a binary search over whole blocks) == the longest common
    prefix with any of the others, cut to whole blocks and to the prompt's last boundary."""
    import random

    from plt_deploy.serve.prefix_cache import PrefixCache

    rng = random.Random(0)
    for _ in range(1000):
        block = rng.choice([1, 3, 4, 16])
        pc = PrefixCache(100, block)
        a = [rng.randrange(3) for _ in range(rng.randrange(1, 40))]
        others = [a[:rng.randrange(len(a) + 1)] + [rng.randrange(3) for _ in range(rng.randrange(10))]
                  for _ in range(rng.randrange(4))]
        plain = 0
        for b in others:
            same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            plain = max(plain, min(same // block * block, pc.boundary(len(a))))
        assert pc.shared(a, others) == plain, (a, others, block)
