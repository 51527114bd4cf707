"""Bringing a model trained elsewhere: the README's training snippet, and `plt-deploy layout`."""

import os
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from cli_helpers import assert_one_line_error, run_cli
from plt_deploy.checkpoint import init_checkpoint, load_checkpoint, weight_layout
from plt_deploy.config import PLTConfig

ROOT = Path(__file__).resolve().parents[1]


def readme_snippet() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Your own model"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_training_snippet_makes_a_checkpoint_every_command_takes(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    exec(compile(readme_snippet(), "README.md", "exec"), {})
    folder = tmp_path / "runs" / "my-model"
    model = load_checkpoint(folder)
    assert model.cfg.loops == 2 and model.cfg.d_model == 128
    code, out, _ = run_cli(capsys, "layout", "--model", str(folder))
    assert code == 0 and "matches its config" in out
    code, out, _ = run_cli(capsys, "generate", "--model", str(folder), "--prompt", "hi", "--max-new-tokens", "3")
    assert code == 0 and out.startswith("hi")


def test_layout_is_the_checkpoint_the_loader_expects(tmp_path):
    folder = init_checkpoint("tiny", tmp_path / "m", mode="plt", seed=1)
    weights = load_file(folder / "model.safetensors")
    layout = weight_layout(PLTConfig.from_json(folder / "config.json"))
    assert {name: tuple(w.shape) for name, w in weights.items()} == {name: shape for name, shape, _ in layout}
    assert all(role for _, _, role in layout)
    vanilla = {name for name, _, _ in weight_layout(PLTConfig.from_name("tiny", mode="vanilla"))}
    assert not any("gate_" in n for n in vanilla) and "layers.0.attn.gate_weight" in {n for n, _, _ in layout}


def test_layout_of_a_preset_prints_every_tensor(capsys):
    code, out, _ = run_cli(capsys, "layout", "--preset", "tiny")
    params = PLTConfig.from_name("tiny").parameter_count()  # the memory check's count agrees with the layout
    assert code == 0 and f"24 tensors, {params:,} parameters" in out and "[out, in]" in out


def test_layout_names_each_wrong_tensor(tmp_path, capsys):
    folder = init_checkpoint("tiny", tmp_path / "m", seed=1)
    weights = load_file(folder / "model.safetensors")
    weights["layers.0.attn.wq.weight"] = weights["layers.0.attn.wq.weight"][:8]
    del weights["norm.weight"]
    weights["extra.bias"] = torch.zeros(3)
    save_file(weights, folder / "model.safetensors")
    code, out, err = run_cli(capsys, "layout", "--model", str(folder))
    assert_one_line_error(code, err, "2 tensor(s) missing or of the wrong shape, 1 unexpected")
    assert "shape [8, 64]" in out and "MISSING" in out and "UNEXPECTED" in out
    (folder / "model.safetensors").write_bytes(os.urandom(64))
    code, _, err = run_cli(capsys, "layout", "--model", str(folder))
    assert_one_line_error(code, err, "not a valid safetensors file")


def test_layout_of_an_export_folder_says_what_it_takes(tmp_path, capsys):
    export = tmp_path / "ex"
    export.mkdir()
    (export / "manifest.json").write_text("{}")  # what makes a folder an export (backends.folders.folder_kind)
    code, _, err = run_cli(capsys, "layout", "--model", str(export))
    assert_one_line_error(code, err, "is an export folder; --model takes a checkpoint folder")
