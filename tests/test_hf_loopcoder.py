"""IQuest-Coder-V1 Loop (Hugging Face `iquestloopcoder`) folders: loading, refusals, and parity with
mlx-lm's own implementation (mlx_lm/models/iquestloopcoder.py, the `parity` extra)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from plt_deploy import hf
from plt_deploy.backends.torch_backend import TorchBackend
from plt_deploy.checkpoint import load_checkpoint
from plt_deploy.config import PLTConfig
from plt_deploy.errors import CheckpointError
from plt_deploy.model import PLT

PROMPT, STEPS = 20, 24

# (name, config overrides, file dtype): GQA ratios 1/4/5, head_dim 16..64, window < prompt and
# window > the whole sequence (PROMPT + STEPS), tied and untied embeddings, fp32 and bf16 files.
SHAPES = [
    ("gqa1-hd16-w4-tied-fp32", dict(d_model=64, n_heads=4, n_kv_heads=4, head_dim=16, window=4,
                                    tie_embeddings=True), "float32"),
    ("gqa4-hd32-w64-untied-bf16", dict(d_model=64, n_heads=8, n_kv_heads=2, head_dim=32, window=64,
                                       tie_embeddings=False), "bfloat16"),
    ("gqa5-hd64-w7-untied-fp32", dict(d_model=80, n_heads=10, n_kv_heads=2, head_dim=64, window=7,
                                      tie_embeddings=False), "float32"),
]


def random_loopcoder(seed: int = 0, loops: int = 2, dtype: str = "float32", **overrides) -> PLT:
    """A LoopCoder with weights of unit-ish activations (so logits are spread and greedy is stable)
    and open, head-dependent gates."""
    base = dict(vocab_size=97, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, mlp_hidden=96, max_seq_len=128,
                rope_theta=500000.0, norm_eps=1e-5)
    cfg = PLTConfig(**{**base, **overrides, "mode": "loopcoder", "loops": loops, "dtype": dtype,
                       "extra": {"hf": {"bos_token_id": 1, "eos_token_id": [2, 4]}}})
    model = PLT(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif name == "embed.weight" or "gate" in name:
                p.copy_(torch.randn(p.shape, generator=g) * (0.3 if "gate" in name else 1.0))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))
    return model.to(getattr(torch, dtype))


def write_folder(tmp_path: Path, model: PLT, name: str = "loopcoder", **kw) -> Path:
    return hf.save_hf_checkpoint(model, tmp_path / name, **kw)


SPECIALS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "<|endoftext|>"]
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                 "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def write_tokenizer(folder: Path, vocab_size: int = 97, template_file: bool = False) -> None:
    """A word-level tokenizer.json (ids 0..5 special, then w6..), tokenizer_config.json with bos/eos
    strings and a chat template (or chat_template.jinja), generation_config.json with an eos LIST."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(SPECIALS)}
    words = ["user", "assistant", "system", "hello", "world"]
    vocab.update({w: len(SPECIALS) + i for i, w in enumerate(words)})
    vocab.update({f"w{i}": i for i in range(len(vocab), vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(SPECIALS)
    tok.save(str(folder / "tokenizer.json"))
    config = {"bos_token": "<s>", "eos_token": {"content": "<|im_end|>"}, "add_bos_token": True}
    if template_file:
        (folder / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    else:
        config["chat_template"] = CHAT_TEMPLATE
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": [2, 4]}))


def test_load_maps_names_gate_and_dtype(tmp_path):
    model = random_loopcoder(dtype="bfloat16", tie_embeddings=False)
    folder = write_folder(tmp_path, model, shards=3)
    loaded = load_checkpoint(folder)
    assert loaded.cfg.mode == "loopcoder" and loaded.cfg.dtype == "bfloat16"
    assert all(p.dtype == torch.bfloat16 for p in loaded.parameters())  # bf16 stays bf16
    from safetensors import safe_open
    shard = json.loads((folder / hf.INDEX_FILE).read_text())["weight_map"]["model.gate_projections.0.weight"]
    with safe_open(str(folder / shard), "pt") as f:  # the file holds the published (global-part) gate
        assert torch.equal(f.get_tensor("model.gate_projections.0.weight"), -model.layers[0].attn.gate_weight)
    assert torch.equal(loaded.layers[0].attn.gate_weight, model.layers[0].attn.gate_weight)
    for a, b in zip(loaded.state_dict().values(), model.state_dict().values()):
        if a.shape == b.shape and a.dtype == b.dtype:
            assert torch.equal(a, b)


@pytest.mark.parametrize("loops", [2, 3, 4])
def test_cached_decode_equals_full_forward(loops):
    """Any L >= 2 (mlx-lm implements L = 2 only): prefill + decode steps equal the full forward."""
    model = random_loopcoder(loops=loops, window=5).eval()
    tokens = torch.randint(0, 97, (2, PROMPT + 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(tokens)  # [B, S, V]
    session = TorchBackend(model).start(2, PROMPT + 12)
    got = [session.prefill(tokens[:, :PROMPT], torch.tensor([PROMPT, PROMPT]))]
    for t in range(PROMPT, PROMPT + 11):
        got.append(session.decode(tokens[:, t]))
    err = (torch.stack(got, 1) - full[:, PROMPT - 1:-1]).abs().max().item()
    assert err < 1e-5 * full.abs().max().item(), err
    # K and V x batch 2 x 2 KV heads x head_dim 16 x 2 layers x (T + (L-1) w) slots x fp32
    assert session.kv_bytes() == 2 * 2 * 2 * 16 * 2 * ((PROMPT + 12) + (loops - 1) * 5) * 4


# Refusals ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("change, words", [
    (dict(model_type="llama"), "supported: iquestloopcoder"),
    (dict(rope_scaling={"type": "linear", "factor": 2.0}), "rope_scaling"),
    (dict(attention_bias=True), "attention_bias"),
    (dict(quantization={"group_size": 64, "bits": 4}), "quantization"),
    (dict(quantization_config={"quant_method": "gptq"}), "quantization_config"),
    (dict(loop_num=1), "loop_num"),
])
def test_config_refusals(tmp_path, change, words):
    folder = write_folder(tmp_path, random_loopcoder())
    data = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**data, **change}))
    with pytest.raises(CheckpointError, match=words) as exc:
        load_checkpoint(folder)
    assert "\n" not in str(exc.value) and "config.json" in str(exc.value)


@pytest.mark.parametrize("key", ["rope_theta", "rms_norm_eps"])
def test_missing_numeric_defaults_are_refused_not_guessed(tmp_path, key):
    """rope_theta's default is 10000 in Llama's config class and 500000 in mlx-lm's LoopCoder: a
    guess gave wrong logits with no error (reported); now the field is named."""
    folder = write_folder(tmp_path, random_loopcoder())
    data = json.loads((folder / "config.json").read_text())
    del data[key]
    (folder / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=f"missing field '{key}'"):
        load_checkpoint(folder)


def test_config_shapes_that_are_accepted_or_explained(tmp_path):
    folder = write_folder(tmp_path, random_loopcoder())
    data = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**data, "rope_scaling": {"rope_type": "default"}}))
    load_checkpoint(folder)  # plain RoPE spelled out
    theta = data["rope_theta"]  # transformers 5 writes it into rope_parameters
    v5 = {**{k: v for k, v in data.items() if k != "rope_theta"}, "rope_parameters": {"rope_theta": theta,
                                                                                     "rope_type": "default"}}
    (folder / "config.json").write_text(json.dumps(v5))
    assert load_checkpoint(folder).cfg.rope_theta == theta
    (folder / "config.json").write_text(json.dumps({**v5, "rope_parameters": {"rope_theta": theta,
                                                                              "rope_type": "yarn"}}))
    with pytest.raises(CheckpointError, match="rope_parameters .* is not supported"):
        load_checkpoint(folder)
    (folder / "config.json").write_text(json.dumps({k: v for k, v in data.items() if k != "model_type"}))
    with pytest.raises(CheckpointError, match="a Hugging Face config without model_type"):
        load_checkpoint(folder)


def test_shards_must_agree_with_the_index(tmp_path):
    """A tensor in two shards (the later one silently won: an all-zero lm_head generated nothing),
    or an index naming a tensor no shard holds, is refused by every command, layout included."""
    from safetensors.torch import load_file, save_file

    folder = write_folder(tmp_path, random_loopcoder(), shards=2)
    first, second = folder / "model-00001-of-00002.safetensors", folder / "model-00002-of-00002.safetensors"
    a, b = load_file(first), load_file(second)
    name = next(iter(a))
    save_file({**b, name: torch.zeros_like(a[name])}, str(second))
    with pytest.raises(CheckpointError, match=f"tensor '{name}' is also in {first.name}"):
        load_checkpoint(folder)
    with pytest.raises(CheckpointError, match="is also in"):
        hf.header_shapes(folder)  # what `layout` reads
    save_file(b, str(second))
    index = json.loads((folder / hf.INDEX_FILE).read_text())
    index["weight_map"]["model.extra.weight"] = second.name
    (folder / hf.INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="lists tensor 'model.extra.weight' in .*which does not hold it"):
        load_checkpoint(folder)


def test_layout_refuses_a_truncated_shard_and_bin_files_are_named(tmp_path, capsys):
    from cli_helpers import run_cli

    folder = write_folder(tmp_path, random_loopcoder(), shards=2)
    shard = folder / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    code, out, err = run_cli(capsys, "layout", "--model", str(folder))
    assert code != 0 and "lies outside the file" in err, out + err
    for f in folder.glob("model*.safetensors*"):
        f.unlink()
    (folder / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="pytorch_model.bin is not read: only safetensors"):
        load_checkpoint(folder)


def test_saving_again_with_fewer_shards_loads_the_new_weights(tmp_path):
    """save_hf_checkpoint(shards=1) over a 2-shard save left the old index and shards, and loading
    returned the OLD model (reported). Now they are removed; a folder holding both a single file and
    an index is refused (Hugging Face loads one, other tools the other)."""
    old, new = random_loopcoder(seed=1), random_loopcoder(seed=2)
    folder = hf.save_hf_checkpoint(old, tmp_path / "m", shards=2)
    hf.save_hf_checkpoint(new, folder, shards=1)
    assert sorted(p.name for p in folder.glob("model*")) == ["model.safetensors"]
    tokens = torch.tensor([[1, 5, 9, 3]])
    with torch.no_grad():
        got, want, stale = load_checkpoint(folder)(tokens), new(tokens), old(tokens)
        assert torch.allclose(got, want, atol=1e-4) and not torch.allclose(got, stale, atol=1e-1)
        hf.save_hf_checkpoint(old, folder, shards=3)
        assert not (folder / "model.safetensors").exists()
        assert torch.allclose(load_checkpoint(folder)(tokens), stale, atol=1e-4)
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="holds both model.safetensors and model.safetensors.index.json"):
        load_checkpoint(folder)


def test_weight_refusals(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = write_folder(tmp_path, random_loopcoder(), shards=2)
    shard = folder / "model-00002-of-00002.safetensors"
    tensors = load_file(shard)
    shard.rename(folder / "moved")
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors: shard listed .* missing"):
        load_checkpoint(folder)
    name = next(n for n in tensors if "q_proj" in n)
    save_file({k: v for k, v in tensors.items() if k != name}, str(shard))
    with pytest.raises(CheckpointError, match=f"lists tensor '{name}' in .*which does not hold it"):
        load_checkpoint(folder)
    save_file({**tensors, name: tensors[name][:, 1:].contiguous()}, str(shard))
    with pytest.raises(CheckpointError, match=f"tensor '{name}' has shape"):
        load_checkpoint(folder)
    save_file({**tensors, name: tensors[name].to(torch.int8)}, str(shard))  # a quantized tensor
    with pytest.raises(CheckpointError, match=f"tensor '{name}' has dtype I8"):
        load_checkpoint(folder)
    save_file({**tensors, "model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(8)}, str(shard))
    load_checkpoint(folder)  # RoPE tables some exporters save are ignored (recomputed), as vLLM does
    (folder / hf.INDEX_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="model.safetensors.index.json: not a valid index"):
        load_checkpoint(folder)


# Parity with mlx-lm -------------------------------------------------------------------------------
def _mlx_model(folder: Path):
    mx = pytest.importorskip("mlx.core", reason="mlx-lm parity needs the `parity` extra (mlx[cpu], mlx-lm)")
    from mlx_lm.utils import load_model

    model, _ = load_model(folder)
    model.set_dtype(mx.float32)  # bf16 files: compare both at fp32 (ours loads with dtype="float32")
    return mx, model


def _mlx_full(mx, model, tokens: torch.Tensor) -> torch.Tensor:
    import numpy as np

    return torch.from_numpy(np.array(model(mx.array(tokens.numpy())).astype(mx.float32)))


def _mlx_greedy(mx, model, prompt: torch.Tensor, steps: int):
    """mlx-lm's own cached decode (model.make_cache(), as generate_step does): greedy ids and step logits."""
    import numpy as np

    cache = model.make_cache()
    logits = model(mx.array(prompt.numpy()), cache=cache)[:, -1]
    ids, steps_logits = [], []
    for _ in range(steps):
        steps_logits.append(torch.from_numpy(np.array(logits.astype(mx.float32))))
        nxt = mx.argmax(logits, axis=-1)
        ids.append(int(nxt[0]))
        logits = model(nxt[:, None], cache=cache)[:, -1]
    return ids, torch.stack(steps_logits, 1)  # [B, steps, V]


def _ours_greedy(model: PLT, prompt: torch.Tensor, steps: int):
    session = TorchBackend(model).start(1, prompt.shape[1] + steps)
    logits = session.prefill(prompt, torch.tensor([prompt.shape[1]]))
    ids, steps_logits = [], []
    for _ in range(steps):
        steps_logits.append(logits)
        nxt = logits.argmax(-1)
        ids.append(int(nxt[0]))
        logits = session.decode(nxt)
    return ids, torch.stack(steps_logits, 1)


FP32_FLOOR = 2e-5  # max |ours - mlx| relative to the logits' max |value|: fp32 rounding only


@pytest.mark.parametrize("name, overrides, file_dtype", SHAPES, ids=[s[0] for s in SHAPES])
def test_parity_with_mlx(tmp_path, name, overrides, file_dtype):
    folder = write_folder(tmp_path, random_loopcoder(seed=3, dtype=file_dtype, **overrides))
    mx, theirs = _mlx_model(folder)
    ours = load_checkpoint(folder, dtype="float32")
    tokens = torch.randint(0, 97, (2, PROMPT + STEPS), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = ours(tokens)
    ref = _mlx_full(mx, theirs, tokens)
    scale = ref.abs().max().item()
    err = (full - ref).abs().max().item()
    print(f"{name}: full logits max|d| {err:.3g}, logits scale {scale:.3g}")
    assert err <= FP32_FLOOR * scale, (err, scale)

    prompt = tokens[:1, :PROMPT]
    ids_mlx, logits_mlx = _mlx_greedy(mx, theirs, prompt, STEPS)
    ids_ours, logits_ours = _ours_greedy(ours, prompt, STEPS)
    assert ids_ours == ids_mlx
    step_err = (logits_ours - logits_mlx).abs().max().item()
    print(f"{name}: decode step logits max|d| {step_err:.3g}")
    assert step_err <= FP32_FLOOR * scale, (step_err, scale)


def test_mlx_backend_in_quant_error(tmp_path):
    """bench.mlx_accuracy's MlxBackend (mlx-lm's model behind our session interface; generate's padded
    prompts included) measured against our torch model by check.quant_error: the fp32 models agree,
    and the memo answers a second measurement without running mlx-lm."""
    pytest.importorskip("mlx.core", reason="mlx-lm parity needs the `parity` extra (mlx[cpu], mlx-lm)")
    from plt_deploy.bench.mlx_accuracy import load_mlx
    from plt_deploy.check.quant_error import quantization_error

    folder = write_folder(tmp_path, random_loopcoder(seed=6, window=4))
    ours = TorchBackend(load_checkpoint(folder))
    theirs = load_mlx(folder, ours.config, memo=True)
    first = quantization_error(ours, theirs, "int8", positions=48, greedy_tokens=12)
    assert first["top1_agreement"] == 1.0 and first["logit_rms_error_relative"] < 1e-5
    assert first["greedy_agreement_lengths"] == [12, 12]
    theirs.model = None  # a second measurement must come from the memo
    assert quantization_error(ours, theirs, "int8", positions=48, greedy_tokens=12) == first


def test_gate_sign_matters(tmp_path):
    """Flip the gate's sign in the file (the orientation a wrong mapping would give): parity fails."""
    from safetensors.torch import load_file, save_file

    folder = write_folder(tmp_path, random_loopcoder(seed=4, window=4))
    mx, theirs = _mlx_model(folder)
    tokens = torch.randint(0, 97, (1, PROMPT), generator=torch.Generator().manual_seed(5))
    ref = _mlx_full(mx, theirs, tokens)
    path = folder / hf.SINGLE_FILE
    tensors = load_file(path)
    save_file({k: (-v if k.startswith("model.gate_projections.") else v) for k, v in tensors.items()}, str(path))
    with torch.no_grad():
        flipped = load_checkpoint(folder)(tokens)
    err = (flipped - ref).abs().max().item()
    assert err > 100 * FP32_FLOOR * ref.abs().max().item(), err


# Every command on a Hugging Face folder ----------------------------------------------------------
GEN_PROMPT = "w20 w21 w22 w23 w24 w25 w26"  # seed 3, untied: 13 tokens, then eos id 4 (the list's second)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hf") / "IQuest-Tiny-Loop"
    hf.save_hf_checkpoint(random_loopcoder(seed=3, window=4, max_seq_len=64, tie_embeddings=False), folder)
    write_tokenizer(folder)
    return folder


@pytest.fixture(scope="module")
def hf_export(hf_folder, tmp_path_factory) -> Path:
    """The folder exported with the 2 GB external-data threshold forced down to 1 KiB: the weights go
    to <graph>.onnx.data files, as a real 40B checkpoint's do (validated on ONNX Runtime by export)."""
    from plt_deploy.export import exporter

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(exporter, "EXTERNAL_DATA_LIMIT", 1024)
        return exporter.export_model(hf_folder, tmp_path_factory.mktemp("onnx") / "exp", max_seq=48, max_batch=2,
                                     progress=False)


def _mlx_text(folder: Path, prompt: str, steps: int = 20) -> tuple[list[int], str]:
    """mlx-lm's greedy continuation, cut at the first eos id of the list, decoded by the same tokenizer.json."""
    from plt_deploy.tokenizer import load_tokenizer

    tok = load_tokenizer(folder, 97)
    mx, model = _mlx_model(folder)
    ids, _ = _mlx_greedy(mx, model, torch.tensor([tok.encode(prompt)]), steps)
    cut = next(i for i, t in enumerate(ids) if t in tok.eos_ids) + 1
    return ids[:cut], tok.decode(ids[:cut])


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_generate_text_equals_mlx(hf_folder, hf_export, capsys, backend):
    from cli_helpers import run_cli

    ids, text = _mlx_text(hf_folder, GEN_PROMPT)
    assert len(ids) >= 8 and ids[-1] == 4  # a real continuation, stopped by the list's second eos id
    model = hf_folder if backend == "torch" else hf_export
    code, out, err = run_cli(capsys, "generate", "--model", str(model), "--backend", backend, "--prompt", GEN_PROMPT,
                             "--max-new-tokens", "20")
    assert code == 0, err
    assert out.strip() == GEN_PROMPT + text


def test_export_carries_tokenizer_and_hashes_shards(hf_folder, hf_export):
    from plt_deploy.export.manifest import model_identity, sha256_file

    data = json.loads((hf_export / "manifest.json").read_text())
    assert data["model"]["config"]["mode"] == "loopcoder"
    assert set(data["model"]["sha256"]) == {"config.json", "model.safetensors"}
    assert data["model"]["sha256"] == model_identity(hf_folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert name in data["files"]
    for graph in ("prefill", "decode"):  # external data, hashed by the manifest
        assert data["graphs"][graph]["external_data"] == [f"{graph}.onnx.data"]
        assert data["files"][f"{graph}.onnx.data"]["sha256"] == sha256_file(hf_export / f"{graph}.onnx.data")
    names = [t["name"] for t in data["graphs"]["decode"]["inputs"]]
    assert "past_carry" not in names and names.count("past_local_key.0") == 1  # no carry; L-1 = 1 ring per layer


def test_serve_chat_uses_own_template_and_stops_at_any_eos(hf_folder):
    """plt-deploy serve on the HF folder: model id = folder name, chat through the checkpoint's own
    template (bos string filled in, no second bos), greedy reply = mlx-lm's, stopped at an eos id."""
    httpx = pytest.importorskip("httpx")
    from test_serve_server import ServerThread, sse_events

    from plt_deploy.serve import load_engine
    from plt_deploy.serve.app import ServerSettings, build_app

    engine = load_engine(hf_folder, slots=2, max_context=48)
    tok = engine.tokenizer
    messages = [{"role": "user", "content": "w20 w21 w22 hello"}]
    ids = tok.encode_chat(messages)
    assert ids[0] == 1 and ids.count(1) == 1 and ids[1] == 3  # "<s><|im_start|>user ..." once
    assert tok.eos_ids == (2, 4)
    mx, model = _mlx_model(hf_folder)
    want, _ = _mlx_greedy(mx, model, torch.tensor([ids]), 30)
    cut = next((i for i, t in enumerate(want) if t in tok.eos_ids), None)
    srv = ServerThread(build_app(engine, ServerSettings()))
    try:
        assert httpx.get(srv.url + "/v1/models").json()["data"][0]["id"] == "IQuest-Tiny-Loop"
        body = {"model": "IQuest-Tiny-Loop", "messages": messages, "max_tokens": 30, "temperature": 0}
        r = httpx.post(srv.url + "/v1/chat/completions", json=body, timeout=120)
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        assert choice["message"]["content"] == tok.decode(want[:cut if cut is not None else 30])
        assert choice["finish_reason"] == ("stop" if cut is not None else "length")
        with httpx.stream("POST", srv.url + "/v1/chat/completions", json={**body, "stream": True}, timeout=120) as s:
            events = sse_events(s.iter_lines())
        streamed = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1] if e["choices"])
        assert events[-1] == "[DONE]" and streamed == choice["message"]["content"]
    finally:
        srv.stop()


def test_triton_repo_on_loopcoder_export(hf_folder, hf_export, tmp_path):
    """triton-repo's model logic on the LoopCoder export: text = mlx-lm's greedy text, stopped at an eos id."""
    pytest.importorskip("tritonclient", reason="needs the triton extra: pip install 'plt-deploy[triton]'")
    from test_triton_glue import inputs, model_config_json

    from plt_deploy.triton.repository import write_repository
    from plt_deploy.triton.runtime import Served

    _, text = _mlx_text(hf_folder, GEN_PROMPT)
    repo = write_repository(hf_export, tmp_path / "repo", backend="onnxruntime", slots=2, max_context=48)
    served = Served.load(model_config_json(repo), repo / "plt" / "1")
    try:
        out = []
        served.handle(inputs(text_input=GEN_PROMPT, max_tokens=20), out.append)
        assert len(out) == 1 and out[0].error is None, out
        assert out[0].text == text and out[0].finish_reason == "stop"
    finally:
        served.close()


def test_build_path_on_loopcoder_export(hf_export, capsys):
    """What `plt-deploy build` does before TensorRT: profiles from the manifest's specs, the parser
    support check, one plugin-ready G-SWA node per layer per later loop (R = 1, G = 0); without
    TensorRT the command is one line."""
    import onnx
    from cli_helpers import assert_one_line_error, run_cli

    from plt_deploy.build.engine import check_parser_support, profile_axes, profile_shapes
    from plt_deploy.export.manifest import read_manifest
    from plt_deploy.ops import contract

    manifest = read_manifest(hf_export, verify_hashes=True)
    cfg = manifest.config
    for graph in ("prefill", "decode"):
        spec = manifest.graphs[graph]
        shapes = profile_shapes(spec, profile_axes(graph, 2, 48))
        assert set(shapes) == set(spec.input_names)
        model = onnx.load(str(hf_export / f"{graph}.onnx"), load_external_data=False)
        check_parser_support(model, "10.15.1", hf_export / f"{graph}.onnx")
        nodes = [n for n in model.graph.node if n.op_type == contract.OP_NAME]
        assert len(nodes) == cfg.n_layers * (cfg.loops - 1), graph
        for n in nodes:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            assert attrs["global_rows"] == 0 and attrs["window"] == cfg.window
            assert attrs["plugin_namespace"] == contract.PLUGIN_NAMESPACE.encode()
    assert shapes["past_local_key.0"][2] == [2, 1 * cfg.n_kv_heads, cfg.window, cfg.head_dim]  # 4-D rings (TensorScatter)
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        code, _, err = run_cli(capsys, "build", "--onnx", str(hf_export))
        assert_one_line_error(code, err, "TensorRT")


def test_export_three_loops_validates_on_onnxruntime(tmp_path):
    """L = 3 (beyond mlx-lm): the export validates its ONNX Runtime prefill + decode against torch;
    one ring per layer per later loop."""
    from plt_deploy.export.exporter import export_model

    folder = write_folder(tmp_path, random_loopcoder(seed=3, loops=3, window=4, max_seq_len=64))
    out = export_model(folder, tmp_path / "onnx", max_seq=32, max_batch=2, progress=False)
    names = [t["name"] for t in json.loads((out / "manifest.json").read_text())["graphs"]["decode"]["inputs"]]
    assert sum(n.startswith("past_local_key.") for n in names) == 2 * 2 and "past_carry" not in names


def test_check_and_layout_commands_on_hf_folder(hf_folder, hf_export, capsys):
    from cli_helpers import run_cli

    code, out, err = run_cli(capsys, "check", "--model", str(hf_folder), "--onnx", str(hf_export), "--steps", "4",
                             "--new-tokens", "4")
    assert code == 0 and "PASSED" in out, out + err
    code, out, err = run_cli(capsys, "layout", "--model", str(hf_folder))
    assert code == 0 and "model.gate_projections.1.bias" in out and "negated at load" in out, out + err


def test_int4_export_of_hf_folder_checks_and_generates(hf_folder, tmp_path, capsys):
    """`export --weights int4` straight from a Hugging Face folder (its config.json is HF's, not ours):
    linear weights fused into MatMulNBits, `check` reports quantization error, `generate` runs."""
    import onnx

    from cli_helpers import run_cli

    out = tmp_path / "int4"
    code, _, err = run_cli(capsys, "export", "--model", str(hf_folder), "--out", str(out), "--weights", "int4",
                           "--block-size", "32", "--max-seq", "48", "--max-batch", "2", "--no-validate")
    manifest = json.loads((out / "manifest.json").read_text())
    assert code == 0 and manifest["weights"]["format"] == "int4" and manifest["weights"]["block_size"] == 32, err
    dq = [n for n in onnx.load(str(out / "decode.onnx")).graph.node if n.op_type == "DequantizeLinear"]
    assert len(dq) == manifest["weights"]["quantized_tensors"]["decode"] > 0
    code, out_text, err = run_cli(capsys, "check", "--model", str(hf_folder), "--onnx", str(out), "--steps", "4",
                                  "--new-tokens", "4", "--report", str(tmp_path / "r.json"))
    q = json.loads((tmp_path / "r.json").read_text())["backends"]["onnxruntime"]["quantization"]
    assert "quantization error" in out_text and 0 < q["logit_rms_error_relative"] < 1, out_text + err
    code, text, err = run_cli(capsys, "generate", "--backend", "onnxruntime", "--model", str(out),
                              "--prompt", "ab", "--max-new-tokens", "4")
    assert code == 0 and text.strip(), err


def test_loopcoder_caches_written_by_kv_cache_update(hf_export):
    """LoopCoder writes its shared K/V and its per-loop rings through the same PLTCache API: every
    cache output of its decode graph is one TensorScatter in the form TensorRT imports in place."""
    from test_kv_inplace import assert_caches_written_by_kv_cache_update

    assert_caches_written_by_kv_cache_update(hf_export)


def test_check_on_a_sharded_hf_folder(tmp_path, capsys):
    """`check --model` takes a checkpoint in shards (model-0000x-of-0000y.safetensors), as every command does."""
    from cli_helpers import run_cli
    from plt_deploy.export.exporter import export_model

    folder = hf.save_hf_checkpoint(random_loopcoder(seed=4, window=4, max_seq_len=64), tmp_path / "sharded", shards=2)
    assert not (folder / "model.safetensors").exists()
    out = export_model(folder, tmp_path / "onnx", max_seq=32, max_batch=2, progress=False, validate=False)
    code, text, err = run_cli(capsys, "check", "--model", str(folder), "--onnx", str(out), "--steps", "2",
                              "--new-tokens", "2")
    assert code == 0 and "PASSED" in text, text + err


@pytest.mark.parametrize("post_processor", [False, True])
def test_prompt_ids_follow_the_tokenizer_json_post_processor(tmp_path, post_processor):
    """A BOS only where tokenizer.json's post-processor adds one (add_bos_token in the config does not),
    as transformers' AutoTokenizer encodes (compared when transformers is installed)."""
    from tokenizers import Tokenizer, processors

    from plt_deploy.tokenizer import HFTokenizer

    write_tokenizer(tmp_path)  # its tokenizer_config.json says add_bos_token: true
    if post_processor:
        t = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
        t.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
        t.save(str(tmp_path / "tokenizer.json"))
    tok = HFTokenizer(tmp_path / "tokenizer.json")
    words = [tok.token_to_id("hello"), tok.token_to_id("world")]
    assert tok.encode("hello world") == ([1] if post_processor else []) + words
    assert tok.encode("hello world", add_bos=False) == words  # a chat template writing its own BOS
    try:
        import transformers
    except ImportError:
        return
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, "eos_token": "<|im_end|>"}))
    assert transformers.AutoTokenizer.from_pretrained(str(tmp_path)).encode("hello world") == tok.encode("hello world")
