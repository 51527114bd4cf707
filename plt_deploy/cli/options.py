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


def finite(ctx, param, value: float | None) -> float | None:
    """click callback: refuse nan and inf (FloatRange lets them through)."""
    if value is not None and (value != value or value in (float("inf"), float("-inf"))):
        raise click.BadParameter(f"{value} is not a finite number")
    return value


def non_empty(ctx, param, values: tuple[str, ...]) -> tuple[str, ...]:
    """click callback for repeatable text options: every value must be non-empty."""
    if any(not v for v in values):
        raise click.BadParameter("must be non-empty text")
    return values


def seed_option(**kw):
    """--seed for every command: config.SEED_MIN..SEED_MAX, the server's range too (a usage error, not an
    overflow deep in torch)."""
    from ..config import SEED_MAX, SEED_MIN

    return click.option("--seed", type=click.IntRange(SEED_MIN, SEED_MAX), **kw)


def loops_for_mode(mode: str | None, loops: int | None) -> None:
    """init and layout: --loops (>= 2, a click range) goes with plt or looped; vanilla has one loop."""
    if mode == "vanilla" and loops is not None:
        raise click.BadParameter("vanilla has one loop; --loops goes with --mode plt or looped", param_hint="'--loops'")
