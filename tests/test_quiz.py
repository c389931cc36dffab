"""The interview bank (llama_course/interview/bank.yaml) and the quiz (llama_course/commands/quiz.py).

The bank must answer each of the article's 30 questions exactly once, in both languages, with links that
follow the concept names; every quiz variant's answer is checked against a closed form written here again,
independently of quiz.py.
"""

from __future__ import annotations

import ast
import io
import math
import random
import re
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest

from llama_course.commands import quiz
from simulator.pipeline_parallel import simulate_pipeline

ROOT = Path(__file__).resolve().parents[1]
CONCEPTS = [
    "llama_basics", "collectives", "data_parallel", "tensor_parallel", "pipeline_parallel", "parallel_3d",
    "parameter_server", "sync_async", "load_balancing", "fault_tolerance", "communication_compression",
    "model_compression", "cluster_scheduling", "profiling", "context_parallel",
    "expert_parallel",
]
MERGED = [{9, 21}, {13, 23}, {10, 25}, {12, 18}]
CJK = re.compile(r"[\u4e00-\u9fff]")


@pytest.fixture(scope="module")
def bank():
    return quiz.load_bank()


def _bilingual(d, where):
    assert isinstance(d, dict) and set(d) == {"en", "zh"}, f"{where}: needs exactly en and zh"
    assert d["en"].strip() and d["zh"].strip(), f"{where}: an empty language"
    assert CJK.search(d["zh"]), f"{where}.zh has no Chinese"
    assert not CJK.search(d["en"]), f"{where}.en contains Chinese"


def test_concepts_match_design():
    assert list(quiz.CONCEPTS) == CONCEPTS
    assert quiz.lab_path("llama_basics") == "labs/01_llama_basics.ipynb"
    assert quiz.lab_path("profiling") == "labs/14_profiling.ipynb"
    assert quiz.lab_path("context_parallel") == "labs/15_context_parallel.ipynb"
    assert quiz.lab_path("expert_parallel") == "labs/16_expert_parallel.ipynb"


def test_every_seed_question_is_answered_exactly_once(bank):
    numbers = [n for e in bank["questions"] for n in quiz.seed_numbers(e)]
    assert sorted(numbers) == list(range(1, 31))


def test_duplicates_are_merged_with_a_note(bank):
    merged = [e for e in bank["questions"] if "seed_questions" in e]
    assert sorted(map(set, (e["seed_questions"] for e in merged)), key=min) == sorted(MERGED, key=min)
    for e in merged:
        assert "seed_question" not in e
        _bilingual(e["merge_note"], f"{e['id']}.merge_note")
        for n in e["seed_questions"]:
            assert str(n) in e["merge_note"]["en"]
    for e in bank["questions"]:
        if "seed_questions" not in e:
            assert "merge_note" not in e
            if "seed_question" in e:
                assert isinstance(e["seed_question"], int)
            else:                        # a question the article does not ask: a concept it does not cover
                assert e["concept"] not in {q["concept"] for q in bank["questions"] if quiz.seed_numbers(q)}


def test_entries_are_complete_and_bilingual(bank):
    ids = [e["id"] for e in bank["questions"]]
    assert len(ids) == len(set(ids)) == 32
    for e in bank["questions"]:
        assert e["concept"] in CONCEPTS, e["id"]
        assert set(e.get("related_concepts", [])) <= set(CONCEPTS) - {e["concept"]}, e["id"]
        _bilingual(e["question"], f"{e['id']}.question")
        _bilingual(e["answer"], f"{e['id']}.answer")
        assert len(e["answer"]["en"]) > 400, f"{e['id']}: the answer is as shallow as the article's"
        if "article_note" in e:
            _bilingual(e["article_note"], f"{e['id']}.article_note")
    for item in bank["article_errata"]:
        _bilingual(item, "article_errata")
    assert "meta" in bank["article_errata"][0]["en"].lower() and "RMSNorm" in bank["article_errata"][0]["en"]


def test_links_follow_concept_names(bank):
    for e in bank["questions"]:
        links = e["links"]
        assert links["lab"] == quiz.lab_path(e["concept"]), e["id"]
        assert links["docs"] == f"docs/concepts/{e['concept']}.md", e["id"]
        assert (ROOT / links["docs"]).exists(), links["docs"]
        assert links["exercises"], e["id"]
        for name in links["exercises"]:
            concept, _, func = name.partition(".")
            assert concept in CONCEPTS and func.isidentifier(), f"{e['id']}: bad exercise name {name}"


def test_exercise_links_exist_where_the_exercise_module_exists(bank):
    """Exercise names are provisional until labs/exercises/<concept>.py exists; then they must be in it."""
    for e in bank["questions"]:
        for name in e["links"]["exercises"]:
            concept, _, func = name.partition(".")
            stub = ROOT / "labs" / "exercises" / f"{concept}.py"
            if stub.exists():
                defined = {n.name for n in ast.parse(stub.read_text()).body if isinstance(n, ast.FunctionDef)}
                assert func in defined, f"{e['id']} links {name}, not defined in {stub.name}"


def test_variants_named_in_the_bank_exist_and_are_all_used(bank):
    named = {v for e in bank["questions"] for v in e.get("variants", [])}
    assert named <= set(quiz.VARIANTS)
    assert named == set(quiz.VARIANTS), f"unused variants: {set(quiz.VARIANTS) - named}"
    for required in ["pipeline_bubble", "ring_all_reduce_bytes", "zero_memory", "young_daly"]:
        assert required in named


def test_bank_ships_as_package_data():
    text = (ROOT / "pyproject.toml").read_text()       # tomllib is 3.11+, the package supports 3.10
    section = text[text.index("[tool.setuptools.package-data]"):]
    line = next(ln for ln in section.splitlines() if ln.startswith("llama_course"))
    assert '"interview/*.yaml"' in line


# ---------------------------------------------------------------------------------------------------------
# Every variant against a closed form computed here, from the drawn numbers.


def _closed_form(name: str, p: dict) -> float:
    if name == "pipeline_bubble":
        if p["schedule"] == "zero_bubble":          # F, B, W one unit each: work 3m, idle (p-1)(F + B - W)
            return (p["p"] - 1) / (3 * p["m"] + p["p"] - 1)
        ideal = p["v"] * p["m"]                     # work slots per rank, in units of one chunk's fwd+bwd
        idle = p["p"] - 1                           # fill + drain slots
        return idle / (ideal + idle)
    if name == "ring_all_reduce_bytes":
        n, size = p["n"], p["params"] * p["bytes_per_value"]
        chunk = size / n
        return (n - 1) * chunk * 2 / 1e9            # reduce-scatter then all-gather, n-1 chunks each
    if name == "alpha_beta_all_reduce":
        n, steps = p["n"], 2 * (p["n"] - 1)
        return steps * (p["alpha_s"] + p["size_bytes"] / n / p["bandwidth_Bps"]) * 1e3
    if name == "zero_memory":
        P, N, k = p["params"], p["n"], p["stage"]
        params = 2 * P / (N if k >= 3 else 1)
        grads = 2 * P / (N if k >= 2 else 1)
        optim = 12 * P / (N if k >= 1 else 1)
        return (params + grads + optim) / 1e9
    if name == "young_daly":
        job_mtbf = p["mtbf_gpu_s"] / p["n"]
        return (2 * p["checkpoint_s"] * job_mtbf) ** 0.5 / 60
    if name == "training_flops":
        return 6 * p["params"] * p["tokens"] / 1e21
    if name == "training_days":
        return 6 * p["params"] * p["tokens"] / (p["gpus"] * p["peak_flops"] * p["mfu"]) / 86400
    if name == "tokens_per_second_mfu":
        return p["mfu"] * p["peak_flops"] / (6 * p["params"])
    if name == "grad_accumulation_steps":
        return p["global_batch"] / (p["dp"] * p["micro_batch"])
    if name == "sjf_mean_completion":
        d = sorted(p["durations"])
        return sum(d[i] * (len(d) - i) for i in range(len(d))) / len(d)
    if name == "proportional_split_speedup":
        v = p["speeds"]
        return (1 / len(v) / min(v)) / (1 / sum(v))
    if name == "cp_gather_bytes":                  # K and V of the whole sequence on one tp rank; cp plays no part
        return 2 * p["b"] * p["s"] * p["n_kv_heads"] / p["tp"] * p["head_dim"] * p["bytes"] / 2**20
    if name == "ep_dispatch_bytes":                # every token leaves k times, d/t of it per tp rank; ep plays no part
        return p["b"] * p["s"] * p["k"] * p["dim"] / p["tp"] * p["bytes"] / 2**20
    raise AssertionError(f"no closed form written for variant {name}")


@pytest.mark.parametrize("name", sorted(quiz.VARIANTS))
def test_variant_answers_match_closed_form(name):
    for seed in range(60):
        v = quiz.draw_variant(name, random.Random(seed))
        assert v.answer > 0
        assert math.isclose(v.answer, _closed_form(name, v.params), rel_tol=1e-12), (name, v.params)
        for lang in ("en", "zh"):
            assert v.question[lang] and v.explanation[lang]
        # the explanation states the answer, as the quiz prints it
        assert f"{v.answer:.4g}".split("e")[0][:3] in v.explanation["en"].replace(",", "")


@pytest.mark.parametrize("name", sorted(quiz.VARIANTS))
def test_generate_variant_is_reproducible(name):
    a = quiz.generate_variant(name, random.Random(11))
    b = quiz.generate_variant(name, random.Random(11), lang="zh")
    assert len(a) == 4 and a[:3] == b[:3]
    q_en, q_zh, value, explanation = a
    assert isinstance(value, (int, float)) and CJK.search(q_zh) and not CJK.search(q_en)
    assert explanation and CJK.search(b[3])


def test_known_values():
    """Spot checks against numbers quoted in the course."""
    assert _closed_form("pipeline_bubble", dict(p=4, m=8, v=1, schedule="1f1b")) == pytest.approx(3 / 11)
    assert _closed_form("pipeline_bubble", dict(p=4, m=8, v=1, schedule="zero_bubble")) == pytest.approx(3 / 27)
    assert _closed_form("zero_memory", dict(params=7.5e9, n=64, stage=3)) == pytest.approx(1.875)  # ZeRO paper
    assert _closed_form("sjf_mean_completion", dict(durations=[10, 2, 1])) == pytest.approx(17 / 3)


def test_unknown_variant_names_itself():
    with pytest.raises(KeyError, match="no_such"):
        quiz.draw_variant("no_such", random.Random(0))


# ---------------------------------------------------------------------------------------------------------
# Grading and the command line


@pytest.mark.parametrize("text,value", [("0.25", 0.25), ("25%", 0.25), ("3/7", 3 / 7), ("1,024", 1024.0),
                                        ("1.2e3", 1200.0), (" 7 ", 7.0), ("", None), ("abc", None), ("1/0", None)])
def test_parse_number(text, value):
    got = quiz.parse_number(text)
    assert got == (pytest.approx(value) if value is not None else None)


def test_is_correct_uses_relative_tolerance():
    assert quiz.is_correct(101.0, 100.0) and not quiz.is_correct(103.0, 100.0)
    assert not quiz.is_correct(None, 1.0)


def test_interactive_grades_answers():
    items = quiz.draw_quiz(3, random.Random(4))
    typed = iter([f"{items[0][0].answer * 1.01}", "-1", ""])
    out = io.StringIO()
    score = quiz.run_interactive(items, "en", input_fn=lambda prompt: next(typed), out=out)
    assert score == 1
    text = out.getvalue()
    assert "correct." in text and "not quite." in text and "skipped." in text and "Score: 1/3" in text


def test_interactive_survives_end_of_input():
    items = quiz.draw_quiz(1, random.Random(0))

    def eof(prompt):
        raise EOFError

    assert quiz.run_interactive(items, "zh", input_fn=eof, out=io.StringIO()) == 0


def test_draw_quiz_covers_variants_before_repeating():
    items = quiz.draw_quiz(len(quiz.VARIANTS), random.Random(2))
    assert {v.name for v, _ in items} == set(quiz.VARIANTS)
    for v, entry in items:
        assert v.name in entry["variants"]


def test_cli_answers_mode(capsys):
    assert quiz.cli(Namespace(n=4, seed=9, lang="zh", answers=True)) == 0
    out = capsys.readouterr().out
    assert out.count("答案:") == 4 and "--seed 9" in out


def test_cli_without_tty_prints_answers():
    """`llama-course quiz` with no terminal on stdin: questions and answers, no prompt, exit 0."""
    proc = subprocess.run([sys.executable, "-m", "llama_course", "quiz", "--n", "3", "--seed", "1"],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("Answer:") == 3 and "your answer>" not in proc.stdout
    again = subprocess.run([sys.executable, "-m", "llama_course", "quiz", "--n", "3", "--seed", "1"],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert again.stdout == proc.stdout


def test_pipeline_bubble_variants_are_what_the_simulator_simulates():
    """Each drawn pipeline question (1F1B, interleaved, zero bubble) has the idle share the simulator's own
    event-by-event pipeline shows with equal stages (forward 1, backward 2 over v chunks)."""
    seen = set()
    for seed in range(40):
        v = quiz.draw_variant("pipeline_bubble", random.Random(seed))
        p, m, chunks, schedule = v.params["p"], v.params["m"], v.params["v"], v.params["schedule"]
        seen.add(schedule)
        run = simulate_pipeline(schedule, p, m, chunks, [1 / chunks] * (p * chunks), [2 / chunks] * (p * chunks))
        assert 1 - 3 * m / run.makespan == pytest.approx(v.answer), v.params
    assert seen == {"1f1b", "interleaved_1f1b", "zero_bubble"}
