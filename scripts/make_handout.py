"""Make the student handout: the course without solutions/, as a folder and a tarball.

    python scripts/make_handout.py                 # -> handout/llama-course/ and handout/llama-course.tar.gz
    python scripts/make_handout.py --out DIR       # somewhere else
    make handout                                   # the same

The handout holds every file git tracks or would track (untracked files that .gitignore does not ignore),
except solutions/ and this script. Notebooks lose their outputs and execution counts, so no answer leaks
through a saved cell output. The script then checks the copy: no solutions/ folder, and no file that
imports `solutions`.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXCLUDED_DIRS = ("solutions/",)
EXCLUDED_FILES = ("scripts/make_handout.py",)
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
    check_handout(folder)
    tarball = out_dir / f"{NAME}.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(folder, arcname=NAME)
    return folder, tarball, len(files)


IMPORTS_SOLUTIONS = re.compile(r"^\s*(from\s+solutions[\s.]|import\s+solutions\b)", re.MULTILINE)


def check_handout(folder: Path) -> None:
    """Fail loudly if a solution slipped into the handout."""
    if (folder / "solutions").exists():
        raise SystemExit("handout check: solutions/ is in the handout")
    for path in folder.rglob("*.py"):
        if IMPORTS_SOLUTIONS.search(path.read_text(encoding="utf-8", errors="replace")):
            raise SystemExit(f"handout check: {path.relative_to(folder)} imports solutions")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "handout"), help="output folder (default: handout/)")
    args = parser.parse_args(argv)
    folder, tarball, n = make_handout(Path(args.out))
    print(f"handout: {n} files in {folder}\n         {tarball}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
