"""Execute the labs into build/labs/ (the docs site renders these copies, figures included), skipping those
whose notebook and code have not changed since their last run.

    python scripts/execute_labs.py                  # every labs/NN_*.ipynb not executed for this code yet
    python scripts/execute_labs.py 02_collectives   # just these (by stem or file name)
    python scripts/execute_labs.py --force          # re-run even when unchanged

Notebooks are stored in git without outputs. An executed copy records `input_sha256`: the hash of the notebook
and of every file the labs run (llama_course/, simulator/, solutions/, benchmarks/, configs/), so a copy is
fresh only for the very code that produced it (scripts/mkdocs_hooks.py and tests/test_labs.py use the same
test). Each lab runs with labs/ as its working directory, as `jupyter lab labs/` runs it, with a per-cell
timeout. A lab whose cell fails -- a check cell's `assert` on what the prose states included -- is reported
with the failing cell and its error, its stale copy removed, and the script exits 1 after trying the others.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import time
from pathlib import Path

from simulator.cli_args import Parser

ROOT = Path(__file__).resolve().parents[1]
LABS = ROOT / "labs"
OUT = ROOT / "build" / "labs"
CODE = ("llama_course", "simulator", "solutions", "benchmarks", "configs")     # what a lab's cells run
CODE_SUFFIXES = {".py", ".yaml", ".yml", ".json", ".txt"}


def code_hash(root: Path = ROOT) -> str:
    """sha256 over the path and bytes of every source file the labs import or read."""
    h = hashlib.sha256()
    for folder in CODE:
        for path in sorted((root / folder).rglob("*")):
            if path.is_file() and path.suffix in CODE_SUFFIXES and "__pycache__" not in path.parts:
                h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def input_hash(notebook: Path, code: str | None = None) -> str:
    """What an executed copy must have been made from: this notebook, run on this code."""
    code = code_hash() if code is None else code
    return hashlib.sha256(notebook.read_bytes() + code.encode()).hexdigest()


def recorded_hash(executed: Path) -> str | None:
    try:
        meta = json.loads(executed.read_text(encoding="utf-8")).get("metadata", {}).get("llama_course", {})
    except (OSError, json.JSONDecodeError):
        return None
    return meta.get("input_sha256")


def is_fresh(notebook: Path, out: Path = OUT, code: str | None = None) -> bool:
    executed = out / notebook.name
    return executed.exists() and recorded_hash(executed) == input_hash(notebook, code)


def execute(notebook: Path, timeout_s: int, out: Path = OUT, code: str | None = None) -> float:
    """Run one notebook into `out`; returns seconds taken. Raises nbclient's CellExecutionError on a failing
    cell (its message names the cell and the error)."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(notebook, as_version=4)
    start = time.perf_counter()
    NotebookClient(nb, timeout=timeout_s, kernel_name="python3",
                   resources={"metadata": {"path": str(notebook.parent)}}).execute()
    elapsed = time.perf_counter() - start
    nb.metadata["llama_course"] = {"input_sha256": input_hash(notebook, code), "executed_s": round(elapsed, 1)}
    out.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out / notebook.name)
    return elapsed


def failure_summary(error: Exception) -> str:
    """The failing cell's first line and the error it raised (nbclient puts both in its message)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))                 # no terminal colours
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    cell = next((line for line in lines[1:] if not line.startswith("-")), "")
    return f"{lines[-1]}  (in the cell starting {cell[:80]!r})"


def run(notebooks, force: bool = False, timeout_s: int = 600, out: Path = OUT, log=print) -> list:
    """Execute the notebooks that are not fresh; returns the names of those that failed."""
    code = code_hash()
    failed = []
    for nb in notebooks:
        if not force and is_fresh(nb, out, code):
            log(f"execute_labs: {nb.name} unchanged, keeping {out / nb.name}")
            continue
        try:
            log(f"execute_labs: {nb.name} ... {execute(nb, timeout_s, out, code):.1f} s")
        except Exception as e:  # noqa: BLE001 - report every failing lab, then fail
            (out / nb.name).unlink(missing_ok=True)
            log(f"execute_labs: {nb.name} FAILED: {type(e).__name__}: {failure_summary(e)}")
            failed.append(nb.name)
    return failed


def main(argv=None) -> int:
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("labs", nargs="*", help="lab stems or file names (default: all)")
    parser.add_argument("--force", action="store_true", help="execute even if unchanged")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = parser.parse_args(argv)
    notebooks = sorted(LABS.glob("[0-9][0-9]_*.ipynb"))
    if args.labs:
        wanted = {Path(name).stem for name in args.labs}
        notebooks = [nb for nb in notebooks if nb.stem in wanted]
    if not notebooks:
        print("execute_labs: no labs to execute")
        return 0
    failed = run(notebooks, args.force, args.timeout,
                 log=lambda msg: print(msg, file=sys.stderr if " FAILED: " in msg else sys.stdout, flush=True))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
