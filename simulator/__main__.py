"""`python -m simulator CONFIG [--json] [--trace FILE] [--set k=v ...]`: the simulate command without torch."""

from __future__ import annotations

import sys

from simulator.cli_args import Parser
from simulator.config import ConfigError


def main(argv=None) -> int:
    parser = Parser(prog="python -m simulator", description="predict one training step")
    parser.add_argument("config", help="YAML config (schema: docs/design.md)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field, value read as YAML (repeatable)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--trace", metavar="FILE", help="write a Chrome trace of one simulated step")
    args = parser.parse_args(argv)
    try:
        from simulator.simulate import cli

        return cli(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
