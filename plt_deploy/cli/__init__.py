"""The `plt-deploy` command group. It only registers subcommands; each lives in its own module.

Errors caused by input (PLTError, OSError on a user path) print one line and exit 1; click's
own usage errors exit 2. A traceback means a bug in plt-deploy.
"""

from __future__ import annotations

import os
import signal
import sys
from importlib import import_module

import click

from ..errors import PLTError

# subcommand -> module under plt_deploy.cli (imported lazily so --help stays fast).
COMMANDS = {
    "init": "Write a randomly initialised checkpoint.",
    "layout": "List the tensors a checkpoint needs for a config (and check a checkpoint's weights).",
    "train": "Train a small model on a synthetic task and report held-out accuracy.",
    "generate": "Generate text from a prompt on any backend.",
    "export": "Export a checkpoint to ONNX (prefill + decode graphs) with a manifest.",
    "check": "Compare backends (Polygraphy) on prefill, decode steps and greedy generations.",
    "build": "Build TensorRT engines from an export (needs TensorRT and a GPU).",
    "bench": "Benchmark decode latency and KV memory: plt vs looped vs vanilla vs a HF peer.",
    "serve": "Serve a model over an OpenAI-compatible HTTP API (continuous batching, metrics, Ray).",
    "loadtest": "Load-test a running server: concurrent streaming clients, throughput and latency.",
    "triton-repo": "Write a Triton Inference Server model repository (Python backend, streaming).",
}


class ClosedPipe(Exception):
    """stdout's reader went away (`| head`). Not an OSError, so click does not turn it into exit 1."""


class Interrupted(BaseException):
    """Ctrl-C. Not a KeyboardInterrupt, so click neither prints its blank line nor says "Aborted!"."""


class LazyGroup(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            raise ClosedPipe() from None
        except KeyboardInterrupt:
            raise Interrupted() from None

    def list_commands(self, ctx):
        return list(COMMANDS)

    def format_commands(self, ctx, formatter):
        """The COMMANDS descriptions, wrapped, never cut with '...' (and no subcommand imported)."""
        with formatter.section("Commands"):
            formatter.write_dl(list(COMMANDS.items()))

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module_name = f"plt_deploy.cli.{name.replace('-', '_')}_cmd"  # triton-repo -> triton_repo_cmd
        try:
            module = import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                return None
            raise
        return module.command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="plt-deploy")
def cli():
    """plt-deploy: Parallel Loop Transformer models from PyTorch to ONNX Runtime and TensorRT."""


class StreamedLine:
    """`generate --stream` marks stdout's line as open while it writes tokens (see _mid_line)."""

    open = False


def _mid_line() -> bool:
    """A streamed generation stopped (Ctrl-C, an error) in the middle of its line and stdout and stderr
    are one terminal or file: the message then starts a line of its own (was "hello]]interrupted")."""
    if not StreamedLine.open:
        return False
    if sys.stderr.isatty() and sys.stdout.isatty():  # one terminal (stdout to a file: its line is not ours)
        return True
    try:
        sys.stdout.flush()
        out, err = os.fstat(sys.stdout.fileno()), os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):  # closed, or replaced by an object without a file
        return False
    return (out.st_dev, out.st_ino) == (err.st_dev, err.st_ino)


def main(argv=None):
    StreamedLine.open = False
    try:
        cli.main(args=argv, prog_name="plt-deploy", standalone_mode=False)
    except (click.exceptions.Abort, Interrupted, KeyboardInterrupt):
        click.echo(("\n" if sys.stderr.isatty() or _mid_line() else "") + "interrupted", err=True)  # after ^C
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except PLTError as exc:
        click.echo(("\n" if _mid_line() else "") + f"error: {exc}", err=True)
        sys.exit(1)
    except (ClosedPipe, BrokenPipeError):  # the reader went away (`| head`): not a failure of the command
        try:
            sys.stdout = open(os.devnull, "w")  # nothing more to flush into the closed pipe at exit
        finally:
            sys.exit(141)
    except OSError as exc:
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        click.echo(f"error: {where}{exc.strerror or exc}", err=True)
        sys.exit(1)
    if argv is None:  # the command finished: a Ctrl-C from now on (interpreter shutdown) does not make it exit 130
        signal.signal(signal.SIGINT, signal.SIG_IGN)
