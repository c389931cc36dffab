"""Execute the labs into build/labs/ for the docs site, skipping those whose source has not changed.

    python scripts/execute_labs.py                  # every labs/NN_*.ipynb that changed since its last run
    python scripts/execute_labs.py 02_collectives   # just these (by stem or file name)
    python scripts/execute_labs.py --force          # re-run even when unchanged

Notebooks are stored in git without outputs; the docs render the executed copies (scripts/mkdocs_hooks.py
picks a copy only if the sha256 recorded in its metadata matches the notebook). Each lab runs with labs/ as
its working directory, as `jupyter lab labs/` and nbmake run it, with a per-cell timeout. A lab that fails
is reported, its stale copy removed, and the script exits 1 after trying the others.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LABS = ROOT / "labs"
OUT = ROOT / "build" / "labs"


def source_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def is_fresh(notebook: Path) -> bool:
    executed = OUT / notebook.name
    if not executed.exists():
        return False
    try:
        meta = json.loads(executed.read_text(encoding="utf-8")).get("metadata", {}).get("llama_course", {})
    except json.JSONDecodeError:
        return False
    return meta.get("source_sha256") == source_hash(notebook)


def execute(notebook: Path, timeout_s: int) -> float:
    """Run one notebook into build/labs/; returns seconds taken. Raises on a failing cell."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(notebook, as_version=4)
    start = time.perf_counter()
    NotebookClient(nb, timeout=timeout_s, kernel_name="python3",
                   resources={"metadata": {"path": str(LABS)}}).execute()
    elapsed = time.perf_counter() - start
    nb.metadata["llama_course"] = {"source_sha256": source_hash(notebook), "executed_s": round(elapsed, 1)}
    OUT.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, OUT / notebook.name)
    return elapsed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    failed = []
    for nb in notebooks:
        if not args.force and is_fresh(nb):
            print(f"execute_labs: {nb.name} unchanged, keeping build/labs/{nb.name}")
            continue
        try:
            print(f"execute_labs: {nb.name} ... {execute(nb, args.timeout):.1f} s")
        except Exception as e:  # noqa: BLE001 - report every failing lab, then fail
            (OUT / nb.name).unlink(missing_ok=True)
            print(f"execute_labs: {nb.name} FAILED: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                  file=sys.stderr)
            failed.append(nb.name)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
