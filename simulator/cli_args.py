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

    def parse_args(self, args=None, namespace=None):
        """As argparse's, but an unknown argument after a subcommand is the subcommand's mistake: it names
        `llama-course grade` and its --help, not the top-level parser."""
        ns, extra = self.parse_known_args(args, namespace)
        if extra:
            self.chosen(ns).error(f"unrecognized arguments: {' '.join(extra)}")
        return ns

    def chosen(self, ns) -> argparse.ArgumentParser:
        """The (sub)command's parser that read `ns`: the deepest subparser chosen, else this one."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                sub = action.choices.get(getattr(ns, action.dest, None))
                if sub is not None:
                    return sub.chosen(ns) if isinstance(sub, Parser) else sub
        return self


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
