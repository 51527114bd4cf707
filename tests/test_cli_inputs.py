"""Flags checked where click parses them, and what `init` writes."""

import json

import pytest
from safetensors import safe_open

from cli_helpers import run_cli


@pytest.mark.parametrize("dtype, stored", [("bfloat16", "bfloat16"), ("float16", "float16"), ("float32", "float32")])
def test_init_writes_weights_in_the_config_dtype(tmp_path, capsys, dtype, stored):
    code, _, err = run_cli(capsys, "init", "--out", str(tmp_path / "m"), "--dtype", dtype)
    assert code == 0, err
    assert json.loads((tmp_path / "m" / "config.json").read_text())["dtype"] == dtype
    with safe_open(str(tmp_path / "m" / "model.safetensors"), framework="pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {f"torch.{stored}"}


@pytest.mark.parametrize("args, needle", [(("--mode", "vanilla", "--loops", "3"), "vanilla has one loop"),
                                          (("--mode", "plt", "--loops", "1"), "1 is not in the range x>=2")])
def test_init_loops_follow_the_mode(tmp_path, capsys, args, needle):
    code, _, err = run_cli(capsys, "init", "--out", str(tmp_path / "m"), *args)
    assert code == 2 and needle in err and not (tmp_path / "m").exists()
