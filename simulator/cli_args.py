"""argparse as every command line of the project uses it (`llama-course`, `python -m simulator`): a usage
mistake is one line `error: PROG: ...` and exit code 2, as a config mistake is (docs/cli.md)."""

from __future__ import annotations

import argparse
import sys


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake prints one line and exits 2, as a config mistake does."""

    def error(self, message: str):
        print(f"error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def at_least(low: int):
    """An argparse type: an integer no smaller than `low` (a count of steps, layouts, questions, repeats)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse
