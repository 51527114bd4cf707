"""Running the CLI in-process and asserting the one-line error contract (shared by the CLI tests)."""

import pytest

from plt_deploy.cli import main


def run_cli(capsys, *argv):
    """(exit code, stdout, stderr) of `plt-deploy ARGV` run in this process."""
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
        raise SystemExit(0)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def assert_one_line_error(code, err, *needles):
    """Non-zero exit, no traceback, one `error:` line (or click's usage block ending in `Error:`)."""
    assert code not in (0, None), err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 or (code == 2 and lines[-1].startswith("Error:")), err
    for needle in needles:
        assert needle in err, err
