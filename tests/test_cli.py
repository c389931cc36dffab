"""The command line as a newcomer meets it: bad input and surprising states end in one line and a non-zero
exit code, and change no existing file; `--version`; every `--help` shows an example, the README's."""

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llama_course.commands import demo
from llama_course.commands.cli import EXAMPLES, build_parser
from llama_course.trainer import run_worker
from simulator.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")
FAST = ["cluster.num_gpus=1", "parallel.global_batch_size=8", "parallel.micro_batch_size=4", "seq_len=64",
        "training.eval_every=0", "training.eval_batches=1", "training.steps=2"]


def cli(*argv):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "llama_course", *map(str, argv)], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env=env)


def sets(overrides):
    return [x for o in overrides for x in ("--set", o)]


def snapshot(folder) -> dict:
    """Every file under folder: its bytes' digest and modification time."""
    out = {}
    for dirpath, _, names in os.walk(folder):
        for name in names:
            p = os.path.join(dirpath, name)
            out[os.path.relpath(p, folder)] = (hashlib.sha256(Path(p).read_bytes()).hexdigest(), os.stat(p).st_mtime_ns)
    return out


def assert_one_line_error(proc, code=2, match=""):
    assert proc.returncode == code, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert re.search(match, lines[0]), lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint folder of the tiny model at step 2 (and a metrics file beside it)."""
    root = tmp_path_factory.mktemp("trained")
    run_worker(load_config(TINY, FAST), metrics_path=str(root / "m.jsonl"), checkpoint_dir=str(root / "ck"), quiet=True)
    return root


@pytest.fixture
def work(trained, tmp_path):
    """A private copy of the trained folder, and a check at the end that the test changed none of its files."""
    shutil.copytree(trained, tmp_path / "w")
    before = snapshot(tmp_path / "w")
    yield tmp_path / "w", before


def test_resume_into_a_checkpoint_of_a_different_model_is_refused(work):
    w, before = work
    proc = cli("train", TINY, *sets(FAST + ["training.steps=4", "model.preset=small"]), "--checkpoint-dir", w / "ck")
    assert_one_line_error(proc, match="different model.*dim 64 there, 256 here")
    assert snapshot(w) == before


def test_metrics_in_an_unwritable_place_is_refused(work):
    w, before = work
    for target in (w / "m.jsonl" / "metrics.jsonl",          # under a file
                   Path("/proc/llama-course-test/metrics.jsonl"),   # a file system nobody writes, root neither
                   w):                                       # a folder
        proc = cli("train", TINY, *sets(FAST), "--metrics", target, "--checkpoint-dir", w / "new")
        assert_one_line_error(proc, match="--metrics")
    assert snapshot(w) == before and not (w / "new").exists()


def test_a_config_that_is_a_folder_or_empty_is_refused(work):
    w, before = work
    (w / "empty.yaml").write_text("")
    (w / "comments.yaml").write_text("# model: {preset: tiny}\n")
    before = snapshot(w)
    assert_one_line_error(cli("train", w), match="is a folder")
    assert_one_line_error(cli("simulate", ROOT / "configs"), match="is a folder")
    assert_one_line_error(cli("simulate", w / "empty.yaml"), match="empty")
    assert_one_line_error(cli("train", w / "comments.yaml", "--checkpoint-dir", w / "ck"), match="empty")
    assert snapshot(w) == before
    with pytest.raises(ConfigError, match="empty"):
        load_config(w / "empty.yaml")


def test_nothing_left_to_train_is_an_error_unless_allowed(work):
    w, before = work
    proc = cli("train", TINY, *sets(FAST), "--checkpoint-dir", w / "ck", "--metrics", w / "m.jsonl")
    assert_one_line_error(proc, match="already at step 2 and training.steps is 2.*--allow-noop")
    proc = cli("train", TINY, *sets(FAST), "--checkpoint-dir", w / "ck", "--metrics", w / "m.jsonl", "--allow-noop")
    assert proc.returncode == 0 and "nothing to train" in proc.stdout, proc.stdout + proc.stderr
    assert snapshot(w) == before


def test_a_corrupt_only_checkpoint_stops_and_fresh_starts_over(work):
    w, _ = work
    rank_file = w / "ck" / "step_00000002" / "rank_00000.pt"
    data = rank_file.read_bytes()
    rank_file.write_bytes(data[: len(data) // 2])
    before = snapshot(w)
    proc = cli("train", TINY, *sets(FAST + ["training.steps=4"]), "--checkpoint-dir", w / "ck")
    assert_one_line_error(proc, match="no intact checkpoint.*--fresh")
    assert snapshot(w) == before
    proc = cli("train", TINY, *sets(FAST + ["training.steps=2"]), "--checkpoint-dir", w / "ck", "--fresh",
               "--metrics", w / "fresh.jsonl")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "step     1/2" in proc.stdout and "kept in" in proc.stdout
    kept = [d for d in os.listdir(w / "ck") if d.startswith("replaced-")]
    assert len(kept) == 1                                   # the corrupt checkpoint is kept aside, byte for byte
    assert (w / "ck" / kept[0] / "step_00000002" / "rank_00000.pt").read_bytes() == data[: len(data) // 2]
    assert (w / "ck" / "latest").read_text().strip() == "step_00000002"


def test_train_prints_a_banner_before_the_first_step(work):
    w, _ = work
    proc = cli("train", TINY, *sets(FAST), "--metrics", w / "banner.jsonl")
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first.startswith("train: ") and "layout dp 1 x tp 1 x pp 1" in first and "engine single" in first
    assert "device cpu (gloo)" in first and "1 process" in first and "steps 1-2" in first


def test_demo_keeps_earlier_runs(tmp_path):
    out = tmp_path / "runs" / "demo"
    assert demo.run_folder(str(out), fresh=False) == str(out)          # free: used as is
    (out / "checkpoints").mkdir(parents=True)
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    before = snapshot(tmp_path)
    assert demo.run_folder(str(out), fresh=False) == f"{out}-2"
    (tmp_path / "runs" / "demo-2").mkdir()
    (tmp_path / "runs" / "demo-2" / "loss.png").write_bytes(b"x")
    assert demo.run_folder(str(out), fresh=False) == f"{out}-3"
    assert snapshot(tmp_path / "runs" / "demo") == {k[len("runs/demo/"):]: v for k, v in before.items()}
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("not a demo run")
    with pytest.raises(ConfigError, match="does not look like a demo run"):
        demo.run_folder(str(other), fresh=True)
    assert (other / "notes.txt").read_text() == "not a demo run"
    assert demo.run_folder(str(out), fresh=True) == str(out) and not out.exists()   # --fresh: replaced


def test_version_and_an_example_in_every_help():
    proc = cli("--version")
    from llama_course import __version__

    assert proc.returncode == 0 and proc.stdout.strip() == f"llama-course {__version__}"
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert set(commands) == set(EXAMPLES)
    for name, sub in commands.items():
        assert f"example:\n  {EXAMPLES[name]}" in sub.format_help(), name
    assert all(e in parser.format_help() for e in EXAMPLES.values())


def test_the_readme_table_shows_the_help_examples():
    """The README's command table and `--help` give the same example for each command."""
    table = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        m = re.match(r"\| `(\w+)` .*\| `(llama-course [^`]+)` \|$", line)
        if m:
            table[m.group(1)] = m.group(2)
    assert table == EXAMPLES


@pytest.mark.parametrize("argv, says", [
    (["plan", TINY, "--top", "0"], "argument --top: must be at least 1, got 0"),
    (["quiz", "--n", "-1"], "argument --n: must be at least 1, got -1"),
    (["bench", "--repeat", "0"], "argument --repeat: must be at least 1, got 0"),
    (["bench", "--repeat", "x"], "argument --repeat: expected an integer, got 'x'"),
    (["train", TINY, "--trace-steps", "0"], "argument --trace-steps: must be at least 1, got 0"),
    (["train", TINY, "--max-restarts", "-1"], "argument --max-restarts: must be at least 0, got -1"),
    (["compress", "ckpt", "--method", "zip", "--out", "x"], "argument --method: invalid choice: 'zip'"),
    (["generate", "ckpt", "--prompt", "a", "--top-k", "-3"], "argument --top-k: must be at least 0, got -3"),
    (["simulate"], "the following arguments are required: config"),
    (["nosuch"], "invalid choice: 'nosuch'"),
])
def test_a_usage_mistake_is_one_line_and_exit_2(argv, says, capsys):
    """argparse's own mistakes (a count below its least value, an unknown choice, a missing argument) end as
    a config mistake does: one line naming the command, exit 2 (not argparse's usage block; `--top 0` used
    to print an empty table, `bench --repeat 0` to measure for minutes)."""
    from llama_course.commands.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and says in err and err.startswith("error: llama-course")
    assert err.count("\n") == 1


@pytest.mark.parametrize("argv, flag", [
    (["simulate", TINY, "--trace", "{file}/t.json"], "--trace"),
    (["compare", TINY, "--trace-dir", "{file}"], "--trace-dir"),
    (["bench", "--quick", "--out", "{file}/p.json"], "--out"),
    (["grade", "--only", "collectives", "--out", "{file}/r.json"], "--out"),
])
def test_an_output_that_cannot_be_written_is_refused_before_any_work(tmp_path, argv, flag):
    """A file where a folder must be: one line naming the flag, exit 2, before any measuring or training (bench
    used to measure for minutes first; simulate, compare and grade ended in a traceback), the file untouched."""
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    proc = cli(*[a.format(file=blocker) for a in argv])
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"error: {flag}: cannot write") and "is a file" in proc.stderr
    assert blocker.read_text() == "keep me" and sorted(os.listdir(tmp_path)) == ["a-file"]


def test_simulate_writes_its_trace_into_a_new_folder(tmp_path):
    out = tmp_path / "new" / "deeper" / "t.json"
    proc = cli("simulate", TINY, "--trace", out)
    assert proc.returncode == 0, proc.stderr
    assert '"traceEvents"' in out.read_text()


@pytest.mark.parametrize("module", ["simulator", "simulator.cluster_scheduling", "llama_course.commands.demo",
                                    "llama_course.commands.gpu_check", "llama_course.coordination.fault_tolerance",
                                    "llama_course.coordination.fault_tolerance_torchft"])
def test_every_python_m_entry_point_says_a_usage_mistake_in_one_line(module):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    argv = [TINY] if "fault_tolerance" in module or module == "simulator" else []
    proc = subprocess.run([sys.executable, "-m", module, *argv, "--bogus"], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env=env)
    assert proc.returncode == 2 and proc.stderr == (
        f"error: python -m {module}: unrecognized arguments: --bogus (see python -m {module} --help)\n")


@pytest.mark.parametrize("command", ["grade", "simulate", "quiz"])
def test_an_unknown_argument_names_its_subcommand(command):
    """argparse used to report a subcommand's unknown argument from the top-level parser ("llama-course:
    unrecognized arguments", see llama-course --help); the mistake and the help to read are the subcommand's."""
    argv = [command] + ([TINY] if command == "simulate" else []) + ["--bogus", "x"]
    proc = cli(*argv)
    assert proc.returncode == 2 and proc.stderr == (
        f"error: llama-course {command}: unrecognized arguments: --bogus x (see llama-course {command} --help)\n")


def test_compress_into_a_file_is_refused_and_keeps_it(work):
    folder, before = work
    (folder / "a-file").write_text("keep me")
    for out, says in ((folder / "a-file", "is a file; give a folder"), (folder / "a-file" / "sub", "cannot write")):
        assert_one_line_error(cli("compress", folder / "ck", "--method", "int8", "--out", out), match=says)
    assert (folder / "a-file").read_text() == "keep me"


def test_nproc_mends_a_layout_that_only_it_makes_valid(tmp_path):
    """--nproc 1 on a 2-GPU config whose global batch 4 only one rank can split (dp 2 x micro-batch 4 cannot):
    the layout is read as written, then --nproc applied, then validated (it used to validate first)."""
    proc = cli("train", TINY, "--nproc", "1", "--quiet", *sets(FAST[1:] + ["parallel.global_batch_size=4",
                                                                       "training.steps=1"]))
    assert proc.returncode == 0, proc.stderr
    assert_one_line_error(cli("train", TINY, "--quiet", *sets(["parallel.global_batch_size=4"])),
                          match="global_batch_size: 4 is not divisible by dp x micro_batch_size = 2 x 4")
