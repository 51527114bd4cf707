"""One progress display for train, export and bench: plain lines on stderr when it is not a terminal."""

from plt_deploy.progress import progress_reporter


def test_plain_lines_every_call_and_a_total_set_later(capsys):
    with progress_reporter("bench", None, every=0) as report:
        report.advance("plt-2 b1")
        report.set_total(3)
        report.advance("plt-2 b8")
    lines = [line.rsplit(" (", 1)[0] for line in capsys.readouterr().err.splitlines()]
    assert lines == ["bench: 0/?", "bench: 1/? plt-2 b1", "bench: 2/3 plt-2 b8", "bench: 2/3 plt-2 b8"]


def test_throttled_lines_end_with_the_last_state(capsys):
    with progress_reporter("train plt", 100, every=3600, detail="starting") as report:
        for step in range(1, 101):
            report(step, f"loss {1 / step:.2f}")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and lines[0].startswith("train plt: 0/100 starting")
    assert lines[1].startswith("train plt: 100/100 loss 0.01")


def test_disabled_prints_nothing_but_counts(capsys):
    with progress_reporter("export", 7, enabled=False) as report:
        report.advance("trace")
        report.advance("save")
    assert report.done == 2 and capsys.readouterr().err == ""
