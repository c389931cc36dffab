"""`make test-readme` (kept out of `make test` to keep CI under 30 minutes on 2 cores; ~4 minutes alone):
every command line of the README and docs/getting-started.md works as written, run as a user runs them
after the Quickstart: in order, in a fresh copy of the repository, in a bash shell whose `.venv` is new and
whose `source .venv/bin/activate` is what puts `llama-course` on the PATH.

The commands are read from the pages themselves (fenced bash blocks, and the `llama-course ...` examples of
the README's command table), so a line added to either page is run here without editing this file.
Lines that cannot run in a test are listed in NOT_RUN with the reason; every other line runs in full, as
written (the long ones: `make demo` trains 400 steps, `train` and `torchrun` 200, `plan` searches the
LLaMA-7B layouts, `bench --quick` measures this machine, each in a few minutes at most on 2 loaded cores).

The fresh `.venv` is a new virtual environment without pip: it sees the copy (not the original tree) and the
project venv's installed packages through .pth files, and its `llama-course` and `torchrun` commands are
written from the entry points of pyproject.toml and torch, as pip would write them. Its install stamps are
set, so `make demo` trains instead of installing (what `make demo` installs is measured by hand: the Makefile).
$HOME is new too: no cached tokenizer, no `bench` profile of an earlier run.
"""

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = ("README.md", "docs/getting-started.md")
NOT_RUN = {
    "make test": "this test suite itself",
    "make serve": "a server that runs until stopped (tests/test_docs.py builds and serves the site)",
    "git clone <this repository> llama-course && cd llama-course": "the test's fresh copy stands for the clone",
    "torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 -m llama_course train "
    "configs/small.yaml": "two machines of 8 GPUs",
}
EXIT_CODES = {"llama-course grade": (0, 1)}
"""Exit codes a command may end with (default 0): `grade` ends 1 while exercises are still stubs."""
ACTIVATE = "source .venv/bin/activate"


def command_lines(page: str) -> list:
    """The command lines of a page, in order: each line of a ```bash block (comments dropped), and each
    `llama-course ...` example of a table row."""
    lines, in_block = [], False
    for raw in (ROOT / page).read_text(encoding="utf-8").splitlines():
        if raw.startswith("```"):
            in_block = raw.strip() == "```bash"
            continue
        if in_block:
            line = re.sub(r"\s+#\s.*$", "", raw).strip()
            if line and not line.startswith("#"):
                lines.append(line)
        elif raw.startswith("|"):
            lines += re.findall(r"`(llama-course [^`]+)`", raw)
    return lines


def all_command_lines() -> list:
    seen, out = set(), []
    for page in PAGES:
        for line in command_lines(page):
            if line not in seen:
                seen.add(line)
                out.append(line)
    return out


def test_the_pages_have_commands_and_the_quickstart_activates():
    lines = all_command_lines()
    assert lines[:3] == ["make demo", ACTIVATE, "llama-course --help"], lines[:3]
    assert {"llama-course simulate configs/tiny.yaml --json", "make test"} <= set(lines)
    assert set(NOT_RUN) <= set(lines), set(NOT_RUN) - set(lines)      # no stale exemption


def copy_tree(dest: Path) -> None:
    """The repository's files as a clone has them (tracked and new, not ignored: no .venv, runs/, site/)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def fresh_venv(tree: Path) -> None:
    """tree/.venv: a new venv that imports the copy's code and the project venv's packages, with console
    scripts for `llama-course` (pyproject.toml) and `torchrun` (torch) and Makefile stamps set."""
    venv = tree / ".venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "00-llama-course-test.pth").write_text("\n".join([str(tree), *sorted(ours)]) + "\n")
    section = (tree / "pyproject.toml").read_text().split("[project.scripts]")[1].split("\n[")[0]
    scripts = dict(re.findall(r'^([\w-]+)\s*=\s*"([\w.]+:\w+)"', section, re.M))
    torchrun = importlib.metadata.entry_points(group="console_scripts", name="torchrun")
    scripts.update({e.name: e.value for e in torchrun})
    for name, target in scripts.items():
        module, func = target.split(":")
        script = venv / "bin" / name
        script.write_text(f"#!{venv / 'bin' / 'python'}\nimport sys\nfrom {module} import {func}\n"
                          f"if __name__ == '__main__':\n    sys.exit({func}())\n")   # as pip writes it: spawned
        # children import the script as __mp_main__ and must not run the command again
        script.chmod(0o755)
    for stamp in (".installed", ".installed-dev"):
        (venv / stamp).touch()


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_every_command_line_works_as_written(tmp_path):
    tree, home = tmp_path / "llama-course", tmp_path / "home"
    tree.mkdir()
    home.mkdir()
    copy_tree(tree)
    fresh_venv(tree)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "LLAMA_COURSE_CACHE",
                                                               "LLAMA_COURSE_CPU_PROFILE")}
    env.update(HOME=str(home), PATH=os.environ.get("PATH", "/usr/bin:/bin"))
    activated, outputs = False, {}
    for line in all_command_lines():
        if line in NOT_RUN:
            continue
        if line == ACTIVATE:
            activated = True
        script = f"{ACTIVATE} && {line}" if activated else line
        proc = subprocess.run(["bash", "-c", script], cwd=tree, env=env, capture_output=True, text=True,
                              timeout=900, stdin=subprocess.DEVNULL)
        out = proc.stdout + proc.stderr
        allowed = next((codes for prefix, codes in EXIT_CODES.items() if line.startswith(prefix)), (0,))
        assert proc.returncode in allowed, f"{line!r} exited {proc.returncode}:\n{out[-3000:]}"
        assert "Traceback" not in out, f"{line!r}:\n{out[-3000:]}"
        outputs[line] = proc.stdout
    demo = outputs["make demo"]
    assert ACTIVATE in demo and "speed probe" in demo and "held-out loss" in demo
    losses = [json.loads(line)["loss"] for line in (tree / "runs" / "demo" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 400 and max(losses[5:]) <= losses[0]          # the curve a newcomer sees: no spike
    assert (tree / "runs" / "demo" / "checkpoints" / "latest").exists()
    assert outputs["llama-course --help"].count("example") >= 1
    assert "parameter bytes" in outputs["llama-course compress runs/demo/checkpoints --method int8 --out runs/int8"]
