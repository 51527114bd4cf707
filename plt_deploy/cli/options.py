"""Option parsers shared by several subcommands."""

from __future__ import annotations

import click


def positive_ints(ctx, param, value: str) -> tuple[int, ...]:
    """click callback: "1,8" -> (1, 8); anything else is a usage error naming the value."""
    try:
        out = tuple(int(x) for x in value.split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if not out or min(out) < 1:
        raise click.BadParameter(f"expected positive integers, got {value!r}")
    return out
