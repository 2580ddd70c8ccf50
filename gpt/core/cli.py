"""Command-line values taken as typed, before Hydra's override parser sees them.

Hydra reads ``key=value`` with a grammar in which a comma makes a sweep and quotes, apostrophes and some
punctuation are syntax: ``prompt=To be, or not to be`` or ``prompt=ROMEO: What's that?`` stop in its parser.
A prompt is free text, so the entry points that take one remove it from the command line first and put it
into the composed config afterwards, verbatim.
"""

import re
import sys


def take_verbatim(keys, argv: list[str] = sys.argv) -> dict[str, str]:
    """Remove every ``key=value`` for ``key`` in ``keys`` from ``argv``; return the values exactly as typed."""
    values, kept = {}, []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key in keys:
            values[key] = value
        else:
            kept.append(arg)
    argv[:] = kept
    return values


def put_verbatim(cfg, values: dict[str, str]) -> None:
    """Set ``cfg[key] = value`` so that reading it back gives ``value`` itself: a ``${`` in it would otherwise be
    read as an OmegaConf interpolation (escaped as ``\\${``; backslashes right before it doubled)."""
    for key, value in values.items():
        cfg[key] = re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", value)
