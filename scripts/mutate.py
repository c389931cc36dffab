"""Mutation testing of the graded tests: break the reference solutions on purpose, one small change at a
time, and check that some graded test notices.

    python scripts/mutate.py                          # every mutant of every solutions/ module (a benchmark)
    python scripts/mutate.py --sample 40 --seed 0     # a fixed, seeded sample (what CI runs)
    python scripts/mutate.py --only collectives --list            # the mutants, without running them
    python scripts/mutate.py --jobs 2 --json mutation.json --min-score 0.95
    make mutation / make mutation-sample              # the same two runs

A mutant is the solution module with one change (the AST is rewritten, then unparsed):

    compare    <  <=  >  >=  ==  !=  in  not in  is  is not   each turned into its neighbour
    arith      +  -   *  /  //  %  **                         +/- and * and / swapped, // % ** made / // *
    bool       and <-> or, `not x` -> x, `-x` -> x, True <-> False
    constant   an int c -> c + 1 and c - 1; a float c -> 2 c (0.0 -> 1.0)
    drop       a statement replaced by `pass` (an assignment, a call, a return, a raise, ...)
    swap       the first two positional arguments of a call swapped (not of max, min, ...: they commute)

Docstrings, f-strings (error messages), imports and the default values in function signatures (the API
the stub fixes) are not mutated. Each mutant runs the graded tests of the exercises its function belongs
to (tests/exercises/test_<concept>.py --exercise N.M; the exercise is read from the stub's docstring, and a
private helper counts for every exercise that calls it) against solutions/ in a private copy of the course,
stopping at the first failure, with a timeout of `--timeout-factor` x that selection's clean run (a hang is
killed, and counts as killed). The score is killed / total; survivors are listed with their line, so a
test can be strengthened (or the mutant shown to be equivalent).
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from simulator.cli_args import Parser

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS, STUBS, TESTS = ROOT / "solutions", ROOT / "labs" / "exercises", ROOT / "tests" / "exercises"
EXERCISE = re.compile(r"Exercise (\d+\.\d+)")

COMPARE = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
           ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is}
ARITH = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Div,
         ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult}
SYMMETRIC = {"max", "min", "math.isclose", "torch.maximum", "torch.minimum", "math.gcd", "math.hypot"}
"""Calls whose first two arguments commute: swapping them cannot change what the code does."""
SYMBOL = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=", ast.In: "in",
          ast.NotIn: "not in", ast.Is: "is", ast.IsNot: "is not", ast.Add: "+", ast.Sub: "-", ast.Mult: "*",
          ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%", ast.Pow: "**", ast.And: "and", ast.Or: "or"}


@dataclass
class Mutant:
    concept: str
    index: int              # the index-th mutation site of the module (stable for a given source)
    line: int
    kind: str
    description: str
    owner: str              # the top-level function or class (or "<module>")
    exercises: tuple        # graded exercises to run; () = the whole test file
    status: str = "not run"
    seconds: float = 0.0


# -- finding the sites ------------------------------------------------------------------------------------

def _skipped(tree: ast.AST) -> set:
    """ids of nodes never mutated: docstrings, f-strings, imports, signature defaults, and what they hold."""
    out = set()

    def hold(node):
        out.update(id(n) for n in ast.walk(node))

    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                hold(first)
        if isinstance(node, (ast.JoinedStr, ast.Import, ast.ImportFrom)):
            hold(node)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for d in [*node.args.defaults, *node.args.kw_defaults]:
                if d is not None:
                    hold(d)
            for a in [*node.args.args, *node.args.kwonlyargs, *node.args.posonlyargs]:
                if a.annotation is not None:
                    hold(a.annotation)
            if node.returns is not None:
                hold(node.returns)
        if isinstance(node, ast.AnnAssign):
            hold(node.annotation)
    return out


def sites(tree: ast.AST, describe: bool = True) -> list:
    """Every (node, kind, description, apply) mutation site, in a fixed order (ast.walk of the module);
    describe=False leaves the (slow to unparse) descriptions of drops and swaps empty."""
    skip = _skipped(tree)
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Compare):
            for i, op in enumerate(node.ops):
                if type(op) in COMPARE:
                    new = COMPARE[type(op)]
                    out.append((node, "compare", f"{SYMBOL[type(op)]} -> {SYMBOL[new]}",
                                lambda n=node, i=i, new=new: n.ops.__setitem__(i, new())))
        elif isinstance(node, (ast.BinOp, ast.AugAssign)) and type(node.op) in ARITH:
            new = ARITH[type(node.op)]
            out.append((node, "arith", f"{SYMBOL[type(node.op)]} -> {SYMBOL[new]}",
                        lambda n=node, new=new: setattr(n, "op", new())))
        elif isinstance(node, ast.BoolOp):
            new = ast.Or if isinstance(node.op, ast.And) else ast.And
            out.append((node, "bool", f"{SYMBOL[type(node.op)]} -> {SYMBOL[new]}",
                        lambda n=node, new=new: setattr(n, "op", new())))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub)):
            out.append((node, "bool" if isinstance(node.op, ast.Not) else "arith",
                        "drop `not`" if isinstance(node.op, ast.Not) else "drop unary -",
                        lambda n=node: setattr(n, "op", ast.UAdd()) if isinstance(n.op, ast.USub)
                        else setattr(n, "_drop_not", True)))
        elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
            out.append((node, "bool", f"{node.value} -> {not node.value}",
                        lambda n=node: setattr(n, "value", not n.value)))
        elif isinstance(node, ast.Constant) and isinstance(node.value, int):
            for delta in (1, -1):
                out.append((node, "constant", f"{node.value} -> {node.value + delta}",
                            lambda n=node, d=delta: setattr(n, "value", n.value + d)))
        elif isinstance(node, ast.Constant) and isinstance(node.value, float):
            new = 2 * node.value if node.value else 1.0
            out.append((node, "constant", f"{node.value!r} -> {new!r}", lambda n=node, v=new: setattr(n, "value", v)))
        elif isinstance(node, ast.Call) and len(node.args) >= 2 and not any(isinstance(a, ast.Starred) for a in node.args[:2]) \
                and ast.dump(node.args[0]) != ast.dump(node.args[1]) and ast.unparse(node.func) not in SYMMETRIC:
            out.append((node, "swap", f"swap the first two arguments of {ast.unparse(node.func)}(...)" if describe else "",
                        lambda n=node: n.args.__setitem__(slice(0, 2), [n.args[1], n.args[0]])))
        for field in ("body", "orelse", "finalbody"):
            body = getattr(node, field, None)
            for i, stmt in enumerate(body if isinstance(body, list) else []):
                if id(stmt) in skip or isinstance(stmt, (ast.FunctionDef, ast.ClassDef, ast.Pass, ast.Import,
                                                         ast.ImportFrom, ast.AsyncFunctionDef)):
                    continue
                if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
                    continue                              # a bare string (an attribute's docstring)
                out.append((stmt, "drop", f"drop `{ast.unparse(stmt).splitlines()[0][:60]}`" if describe else "",
                            lambda n=node, f=field, i=i: getattr(n, f).__setitem__(i, ast.Pass())))
    return out


class _DropNot(ast.NodeTransformer):
    def visit_UnaryOp(self, node):
        self.generic_visit(node)
        return node.operand if getattr(node, "_drop_not", False) else node


def mutated_source(source: str, index: int) -> str:
    """The module's source with its index-th site mutated."""
    tree = ast.parse(source)
    _, _, _, apply = sites(tree, describe=False)[index]
    apply()
    tree = ast.fix_missing_locations(_DropNot().visit(tree))
    return ast.unparse(tree) + "\n"


# -- which exercises a site belongs to ----------------------------------------------------------------------

def exercises_of(concept: str, tree: ast.Module) -> dict:
    """Top-level name -> the exercises that use it (its own "Exercise N.M", or those of its callers)."""
    stub = STUBS / f"{concept}.py"
    own: dict = {}
    for source in (stub.read_text() if stub.exists() else "", ast.unparse(tree)):
        for node in ast.parse(source).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                found = set(EXERCISE.findall(ast.get_docstring(node) or ""))
                for sub in ast.walk(node):
                    if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                        found |= set(EXERCISE.findall(sub.value))
                own.setdefault(node.name, set()).update(found)
    top = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    top[t.id] = node
    uses = {name: {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} |
            {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)} for name, node in top.items()}
    result = {}
    for name in top:
        found, seen, todo = set(own.get(name, ())), {name}, [name]
        while todo:                                  # callers of callers, for private helpers and constants
            current = todo.pop()
            for other, names in uses.items():
                if current in names and other not in seen:
                    seen.add(other)
                    todo.append(other)
                    found |= own.get(other, set())
        result[name] = tuple(sorted(found))
    return result


def mutants(concepts: list) -> list:
    out = []
    for concept in concepts:
        tree = ast.parse((SOLUTIONS / f"{concept}.py").read_text())
        owners = {}
        for node in tree.body:
            name = getattr(node, "name", None) or next((t.id for t in getattr(node, "targets", [])
                                                        if isinstance(t, ast.Name)), None)
            for sub in ast.walk(node):
                owners[id(sub)] = name or "<module>"
        of = exercises_of(concept, tree)
        for index, (node, kind, description, _) in enumerate(sites(tree)):
            owner = owners.get(id(node), "<module>")
            out.append(Mutant(concept, index, getattr(node, "lineno", 0), kind, description, owner,
                              of.get(owner, ())))
    return out


# -- running them -------------------------------------------------------------------------------------------

def course_copy(dest: Path) -> Path:
    """A private copy of the course (what git tracks or would track) to mutate in."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file() and not rel.startswith(("docs/", "benchmarks/", "labs/0", "labs/1")):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def pytest_args(concept: str, exercises: tuple) -> list:
    args = [f"tests/exercises/test_{concept}.py", "--impl", "solutions", "-x", "-q", "-p", "no:cacheprovider",
            "--tb=no", "-o", "addopts="]
    for ex in exercises:
        args += ["--exercise", ex]
    return args


def serve(workdir: Path) -> None:
    """A runner in its own copy of the course: import the heavy libraries once, then for each request (a
    JSON line: concept, exercises, source, timeout) write the mutant, fork, run pytest in the child and
    answer with {status, seconds}. Forking saves the interpreter and torch start-up per mutant, and the gloo
    ranks the tests start (llama_course.core.testing.spawn asks for the "spawn" start method) are forked
    from the same warm process (one thread per process, no process group in the parent: fork-safe)."""
    import os
    import signal

    os.chdir(workdir)
    sys.path.insert(0, str(workdir))
    import numpy  # noqa: F401
    import pytest
    import simpy  # noqa: F401
    import torch

    torch.set_num_threads(1)
    import torch.multiprocessing

    start_method = torch.multiprocessing.get_context

    def get_context(method=None):                        # the tests' gloo ranks: forked from this warm
        return start_method("fork" if method == "spawn" else method)    # process, not started afresh

    torch.multiprocessing.get_context = get_context
    null = os.open(os.devnull, os.O_WRONLY)
    saved = os.dup(1)
    os.dup2(null, 1)                                     # warm up: pytest's plugins, conftests, test modules
    pytest.main(["--co", "-q", "-p", "no:cacheprovider", "tests/exercises", "--impl", "solutions"])
    os.dup2(saved, 1)
    if any(name == "solutions" or name.startswith("solutions.") for name in sys.modules):
        raise SystemExit("mutate: collecting the graded tests imported solutions/; the mutants would not be seen")

    for line in sys.stdin:
        request = json.loads(line)
        target = workdir / "solutions" / f"{request['concept']}.py"
        original = target.read_text()
        target.write_text(request["source"])
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:                                     # the child: one pytest session, then exit
            code = 3
            try:
                os.setpgrp()
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, 1)
                os.dup2(null, 2)
                code = int(pytest.main(pytest_args(request["concept"], tuple(request["exercises"]))))
            finally:
                os._exit(code)
        status = "timeout"
        while time.monotonic() - start < request["timeout"]:
            done, code = os.waitpid(pid, os.WNOHANG)
            if done:
                status = "passed" if os.waitstatus_to_exitcode(code) == 0 else "failed"
                break
            time.sleep(0.02)
        if status == "timeout":
            try:
                os.killpg(pid, signal.SIGKILL)           # the child and the gloo ranks it spawned
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
        target.write_text(original)
        print(json.dumps({"status": status, "seconds": time.monotonic() - start}), flush=True)


class Runner:
    """One `serve` process in its own copy of the course."""

    def __init__(self, workdir: Path):
        import os

        env = {**os.environ, "PYTHONPATH": str(workdir), "PYTHONDONTWRITEBYTECODE": "1",
               "LLAMA_COURSE_EXERCISE_MODULES": ""}
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve", str(workdir)],
                                     cwd=workdir, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.workdir = workdir

    def run(self, concept: str, exercises: tuple, source: str, timeout: float) -> tuple:
        self.proc.stdin.write(json.dumps({"concept": concept, "exercises": list(exercises), "source": source,
                                          "timeout": timeout}) + "\n")
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline())
        return answer["status"], answer["seconds"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def main(argv=None) -> int:
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="concepts to mutate (default: every solutions/ module)")
    parser.add_argument("--sample", type=int, default=0, help="run a seeded sample of this many mutants")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1, help="mutants run at once (each in its own copy)")
    parser.add_argument("--timeout-factor", type=float, default=4.0)
    parser.add_argument("--min-score", type=float, default=0.0, help="exit 1 below this killed share")
    parser.add_argument("--json", help="write every mutant and its status here")
    parser.add_argument("--list", action="store_true", help="list the mutants and stop")
    parser.add_argument("--serve", metavar="WORKDIR", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(Path(args.serve))
        return 0

    concepts = args.only or sorted(p.stem for p in SOLUTIONS.glob("*.py") if p.stem != "__init__")
    todo = mutants(concepts)
    total_sites = len(todo)
    if args.sample and args.sample < len(todo):
        todo = sorted(random.Random(args.seed).sample(todo, args.sample), key=lambda m: (m.concept, m.index))
    if args.list:
        for m in todo:
            print(f"{m.concept}:{m.line} [{m.kind}] {m.description}  ({m.owner}; {', '.join(m.exercises) or 'all'})")
        print(f"{len(todo)} of {total_sites} mutants")
        return 0

    with tempfile.TemporaryDirectory(prefix="mutate-") as tmp:
        runners = [Runner(course_copy(Path(tmp) / f"copy{j}")) for j in range(max(1, args.jobs))]
        baseline: dict = {}
        try:
            for concept in sorted({m.concept for m in todo}):     # the whole file: an upper bound per mutant
                source = (SOLUTIONS / f"{concept}.py").read_text()
                status, seconds = runners[0].run(concept, (), source, timeout=1800)
                if status != "passed":                   # once more: a distributed test may time out under load
                    print(f"the clean run of tests/exercises/test_{concept}.py did not pass ({status}); again")
                    status, seconds = runners[0].run(concept, (), source, timeout=1800)
                if status != "passed":
                    print(f"the clean run of tests/exercises/test_{concept}.py does not pass ({status})")
                    return 2
                baseline[concept] = seconds
            free = list(runners)

            def one(m: Mutant) -> Mutant:
                runner = free.pop()
                try:
                    source = mutated_source((SOLUTIONS / f"{m.concept}.py").read_text(), m.index)
                    status, m.seconds = runner.run(m.concept, m.exercises, source,
                                                   timeout=args.timeout_factor * baseline[m.concept] + 20)
                    m.status = {"passed": "survived", "failed": "killed", "timeout": "killed (timeout)"}[status]
                finally:
                    free.append(runner)
                return m

            start = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(max_workers=len(runners)) as pool:
                for i, m in enumerate(pool.map(one, todo), 1):
                    print("." if m.status.startswith("killed") else "S", end="" if i % 60 else "\n", flush=True)
            elapsed = time.monotonic() - start
        finally:
            for runner in runners:
                runner.close()

    killed = sum(m.status.startswith("killed") for m in todo)
    score = killed / len(todo) if todo else 1.0
    print(f"\nmutation score: {killed}/{len(todo)} killed = {score:.1%} ({len(todo)} of {total_sites} mutants, "
          f"{elapsed:.0f} s, {len(runners)} job(s))")
    by_concept: dict = {}
    for m in todo:
        k, n = by_concept.get(m.concept, (0, 0))
        by_concept[m.concept] = (k + m.status.startswith("killed"), n + 1)
    for concept, (k, n) in sorted(by_concept.items()):
        print(f"  {concept:<28} {k:>4}/{n:<4}")
    survivors = [m for m in todo if m.status == "survived"]
    if survivors:
        print("survivors:")
        for m in survivors:
            print(f"  solutions/{m.concept}.py:{m.line} [{m.kind}] {m.description} ({m.owner})")
    if args.json:
        command = " ".join(["python scripts/mutate.py", *(sys.argv[1:] if argv is None else argv)])
        Path(args.json).write_text(json.dumps({"command": command, "date": time.strftime("%Y-%m-%d", time.gmtime()),
                                               "score": score, "killed": killed, "run": len(todo),
                                               "sites": total_sites, "seconds": elapsed, "seed": args.seed,
                                               "sample": args.sample, "mutants": [asdict(m) for m in todo]},
                                              indent=1))
    return 1 if score < args.min_score else 0


if __name__ == "__main__":
    sys.exit(main())
