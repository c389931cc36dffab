"""Write a mutation run's result (scripts/mutate.py --json) into a Markdown page, between two markers.

    python scripts/mutate.py --sample 500 --seed 1 --jobs 2 --json runs/mutation.json
    python scripts/mutation_report.py runs/mutation.json --write docs/instructor.md

The block between `<!-- mutation-report -->` and `<!-- /mutation-report -->` is replaced by the command
that produced the numbers, its date, the score, a table per solutions/ module and the surviving mutants
(file:line, the change, the function), so no figure on the page is typed by hand. Without --write the
block is printed.
"""

from __future__ import annotations

import datetime
import json
import re
import sys
from pathlib import Path

from simulator.cli_args import Parser

BEGIN, END = "<!-- mutation-report -->", "<!-- /mutation-report -->"


def command_of(run: dict, path: Path) -> str:
    """The command recorded in the run, or (older runs) the one its sample and seed imply."""
    if run.get("command"):
        return run["command"]
    sample = f" --sample {run['sample']} --seed {run['seed']}" if run.get("sample") else ""
    return f"python scripts/mutate.py{sample} --json {path.as_posix()}"


def render(run: dict, path: Path) -> str:
    """The Markdown block (markers included) for one mutation run."""
    date = run.get("date") or datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.timezone.utc).date()
    what = (f"a seeded sample of {run['run']} of the {run['sites']} mutants" if run["run"] < run["sites"]
            else f"all {run['sites']} mutants")
    lines = [BEGIN, "",
             f"`{command_of(run, path)}`, then `python scripts/mutation_report.py {path.as_posix()} --write "
             "docs/instructor.md` (this block is generated)", "",
             f"Run on {date}: {what}, {run['seconds'] / 60:.0f} min. "
             f"**{run['killed']} of {run['run']} killed ({run['score']:.1%})**.", "",
             "| solutions/ module | killed | mutants |", "|---|---:|---:|"]
    per: dict = {}
    for m in run["mutants"]:
        killed, total = per.get(m["concept"], (0, 0))
        per[m["concept"]] = (killed + m["status"].startswith("killed"), total + 1)
    lines += [f"| {concept} | {k} | {n} |" for concept, (k, n) in sorted(per.items())]
    survivors = [m for m in run["mutants"] if m["status"] == "survived"]
    lines += ["", f"Surviving mutants ({len(survivors)}):" if survivors else "No mutant survived.", ""]
    lines += [f"- `solutions/{m['concept']}.py:{m['line']}` [{m['kind']}] {m['description']} "
              f"(`{m['owner']}`, exercise {', '.join(m['exercises']) or 'all'})" for m in survivors]
    return "\n".join(lines + ["", END])


def replace_block(page: str, block: str) -> str:
    """`page` with its mutation block replaced by `block` (ValueError if the markers are missing)."""
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if not pattern.search(page):
        raise ValueError(f"no {BEGIN} ... {END} block on the page")
    return pattern.sub(lambda _: block, page, count=1)


def main(argv=None) -> int:
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the JSON written by scripts/mutate.py --json")
    parser.add_argument("--write", type=Path, help="the Markdown page whose block to replace")
    args = parser.parse_args(argv)
    try:
        block = render(json.loads(args.run.read_text()), args.run)
        if args.write:
            args.write.write_text(replace_block(args.write.read_text(), block))
        else:
            print(block)
    except (OSError, ValueError, KeyError) as e:
        print(f"mutation_report: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
