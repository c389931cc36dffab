"""Make the student handout: the course without solutions/, as a folder and a tarball.

    python scripts/make_handout.py                 # -> handout/llama-course/ and handout/llama-course.tar.gz
    python scripts/make_handout.py --out DIR       # somewhere else
    make handout                                   # the same

The handout holds every file git tracks or would track (untracked files that .gitignore does not ignore),
except the instructor's material: solutions/, the plausible wrong answers the graded tests are checked
against (tests/exercises/wrong_answers/, near-solutions) and their meta-test, the mutation runner, and this
script. Notebooks lose their outputs and execution counts, so no answer leaks through a saved cell output.
The script then checks the copy: no solutions/ folder, no Python file or notebook cell that imports
`solutions`, and every module a lab imports is one the handout ships (or an installed library).

The graded tests, not the handout, keep students from passing an exercise by calling the package's own
implementation: see tests/exercises/guard.py.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from simulator.cli_args import Parser

ROOT = Path(__file__).resolve().parents[1]
EXCLUDED_DIRS = ("solutions/", "tests/exercises/wrong_answers/")
EXCLUDED_FILES = ("scripts/make_handout.py", "scripts/mutate.py", "scripts/mutation_report.py", "tests/test_mutate.py", "tests/test_wrong_answers.py")
NAME = "llama-course"


def course_files(root: Path = ROOT) -> list:
    """Paths (relative, posix) of the files that go into the handout."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=root,
                         capture_output=True, check=True).stdout.decode()
    files = sorted({p for p in out.split("\0") if p})
    return [p for p in files
            if not p.startswith(EXCLUDED_DIRS) and p not in EXCLUDED_FILES and (root / p).is_file()]


def strip_notebook(text: str) -> str:
    """A notebook's JSON with every code cell's outputs and execution count cleared."""
    nb = json.loads(text)
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def make_handout(out_dir: Path, root: Path = ROOT) -> tuple:
    """Write the handout folder and tarball; returns (folder, tarball, number of files)."""
    folder = out_dir / NAME
    if folder.exists():
        shutil.rmtree(folder)
    files = course_files(root)
    for rel in files:
        src, dst = root / rel, folder / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".ipynb"):
            dst.write_text(strip_notebook(src.read_text(encoding="utf-8")), encoding="utf-8")
        else:
            shutil.copy2(src, dst)
    check_handout(folder, root)
    tarball = out_dir / f"{NAME}.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(folder, arcname=NAME)
    return folder, tarball, len(files)


IMPORTS_SOLUTIONS = re.compile(r"^\s*(from\s+solutions[\s.]|import\s+solutions\b)", re.MULTILINE)


def notebook_code(text: str) -> str:
    """The code cells of a notebook as one Python source (IPython magics and shell lines blanked)."""
    cells = [c for c in json.loads(text).get("cells", []) if c.get("cell_type") == "code"]
    lines = []
    for cell in cells:
        source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
        lines += ["" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines()]
    return "\n".join(lines) + "\n"


def imported_modules(source: str) -> set:
    """Dotted names of the modules a Python source imports (absolute imports)."""
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
    return out


def check_handout(folder: Path, root: Path = ROOT) -> None:
    """Fail loudly if a solution slipped into the handout, or a lab imports something it does not ship."""
    if (folder / "solutions").exists():
        raise SystemExit("handout check: solutions/ is in the handout")
    for path in folder.rglob("*.py"):
        if IMPORTS_SOLUTIONS.search(path.read_text(encoding="utf-8", errors="replace")):
            raise SystemExit(f"handout check: {path.relative_to(folder)} imports solutions")
    left_out = {p.name.removesuffix(".py") for p in root.iterdir()
                if (p.is_dir() or p.suffix == ".py") and not (folder / p.name).exists()}
    for nb in sorted(folder.rglob("*.ipynb")):
        for module in sorted(imported_modules(notebook_code(nb.read_text(encoding="utf-8")))):
            if module.split(".")[0] in left_out | {"solutions"}:
                raise SystemExit(f"handout check: {nb.relative_to(folder)} imports {module}, "
                                 "which the handout does not ship")


def main(argv=None) -> int:
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "handout"), help="output folder (default: handout/)")
    args = parser.parse_args(argv)
    folder, tarball, n = make_handout(Path(args.out))
    print(f"handout: {n} files in {folder}\n         {tarball}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
