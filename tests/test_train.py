"""The train command runs end to end and its task splits are disjoint."""

import json
import random

import pytest

from plt_deploy.checkpoint import load_checkpoint
from plt_deploy.training import train_variants
from plt_deploy.tasks import TASKS
from plt_deploy.tokenizer import ByteTokenizer
from plt_deploy.training import make_batch


def test_train_writes_checkpoints_and_results(tmp_path):
    results = train_variants(tmp_path, "addition", ("plt", "vanilla"), steps=3, batch=8, eval_examples=8)
    assert [r["variant"] for r in results] == ["plt", "vanilla"]
    saved = json.loads((tmp_path / "train_results.json").read_text())
    assert saved["results"] == results
    for r in results:
        assert 0.0 <= r["held_out_accuracy"] <= 1.0 and r["steps"] == 3
        assert load_checkpoint(r["checkpoint"]).cfg.mode == r["mode"]


def test_held_out_split_is_disjoint_and_masks_cover_the_answer():
    task = TASKS["addition"]
    rng = random.Random(0)
    train = {task.sample(rng, held_out=False)[0] for _ in range(2000)}
    held = {task.sample(rng, held_out=True)[0] for _ in range(300)}
    assert not train & held
    tokens, mask = make_batch(task, ByteTokenizer(), random.Random(1), 4)
    text = ByteTokenizer().decode(tokens[0].tolist())
    prompt, answer = text.split("=")
    assert int(answer[::-1]) == sum(int(x) for x in prompt.split("+"))
    assert mask[0].sum() == len(answer) + 1  # answer digits and <eos>


def test_a_diverging_run_keeps_nothing(tmp_path, capsys):
    """--lr inf trained a NaN model, saved it and then blamed the dtype (reported). Now the CLI
    refuses non-finite learning rates, and a run whose loss turns NaN stops with a one-line error
    naming --lr and keeps no checkpoint (an existing, empty --out stays empty)."""
    from cli_helpers import run_cli
    from plt_deploy.errors import ModelError
    from plt_deploy.training import train_variants

    for value in ("nan", "inf"):
        code, _, err = run_cli(capsys, "train", "--out", str(tmp_path / "cli"), "--lr", value)
        assert code == 2 and "is not a finite number" in err and "Traceback" not in err, err
    assert not (tmp_path / "cli").exists()
    with pytest.raises(ModelError, match=r"training diverged at step \d+: the loss is nan; lower --lr"):
        train_variants(tmp_path / "new" / "run", steps=3, lr=float("inf"), eval_examples=4)
    assert not (tmp_path / "new" / "run").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError):
        train_variants(tmp_path / "empty", steps=3, lr=float("inf"), eval_examples=4)
    assert list((tmp_path / "empty").iterdir()) == []


def test_a_diverging_variant_keeps_the_variants_that_finished(tmp_path, monkeypatch):
    from plt_deploy import training
    from plt_deploy.errors import ModelError

    real, calls = training.train, []

    def second_diverges(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise ModelError("training diverged at step 1: the loss is nan; lower --lr (it is 1)")
        return real(*args, **kwargs)
    monkeypatch.setattr(training, "train", second_diverges)
    with pytest.raises(ModelError, match="vanilla's checkpoint was not kept"):
        train_variants(tmp_path / "run", variants=("plt", "vanilla"), steps=2, eval_examples=4)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["plt"]
    load_checkpoint(tmp_path / "run" / "plt")  # the finished variant, whole
