"""argparse `type=` helpers shared by the subcommands (their errors name what was expected)."""

from __future__ import annotations

import argparse
from typing import Callable


def at_least_one(what: str) -> Callable[[str], int]:
    """An integer >= 1; the error names what the number counts (`at_least_one("processes")`)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of {what} (an integer >= 1)")
        return value

    return parse
