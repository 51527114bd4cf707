"""plt-deploy loadtest without a server: one error line, nothing sent; error bodies shown as text."""

import socket
import time

import pytest

from plt_deploy.errors import PLTError
from plt_deploy.serve.loadtest import LoadSpec, error_message, run_load


def closed_port() -> int:
    with socket.socket() as s:  # bound then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_server_is_one_error_before_any_request():
    url = f"http://127.0.0.1:{closed_port()}"
    t0 = time.monotonic()
    with pytest.raises(PLTError, match=f"^cannot connect to {url} \\(ConnectError"):
        run_load(LoadSpec(url=url, requests=4))
    assert time.monotonic() - t0 < 10


def test_cli_no_server_prints_one_line_and_exits_1(capsys):
    from plt_deploy.cli import main

    url = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(SystemExit) as exit_info:
        main(["loadtest", "--url", url, "--requests", "4"])
    assert exit_info.value.code == 1
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and err.startswith(f"error: cannot connect to {url} (")


def test_error_message_reads_openai_error_bodies():
    assert error_message(b'{"error": {"message": "missing or wrong API key", "type": "x"}}') == \
        "missing or wrong API key"
    assert error_message(b"Internal Server Error\n") == "Internal Server Error"
    assert error_message(b'{"detail": "nope"}') == '{"detail": "nope"}'
    assert error_message(b"") == "(empty body)"
