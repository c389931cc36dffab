"""Interview quiz: the source article's 30 questions answered correctly, with auto-graded numeric variants.

The bank lives in `llama_course/interview/bank.yaml` (one entry per seed question; duplicated seed questions
are merged). Entries whose answer is a number name *variants*: generators below that draw fresh numbers
each time, so a student cannot memorise the answer, only the formula:

    pipeline_bubble           (p-1)/(v*m+p-1)            1F1B / interleaved 1F1B bubble fraction
    ring_all_reduce_bytes     2(n-1)/n * S               bytes each rank sends in a ring all-reduce
    alpha_beta_all_reduce     2(n-1)*a + 2(n-1)/n * S/B  ring all-reduce time, alpha-beta model
    zero_memory               16P | 4P+12P/N | 2P+14P/N | 16P/N   model states per GPU, ZeRO stage 0-3
    young_daly                sqrt(2*C*M)                checkpoint interval; M = MTBF_gpu / N
    training_flops            6*N*D                      training FLOPs of a dense transformer
    training_days             6*N*D / (G*peak*MFU)       wall-clock time to train
    tokens_per_second_mfu     MFU*peak / (6*N)           tokens/s per GPU at a given MFU
    grad_accumulation_steps   B / (dp*mbs)               micro-batches per optimizer step
    sjf_mean_completion       mean of prefix sums of sorted durations   shortest-job-first JCT
    proportional_split_speedup  sum(v) / (n*min(v))      weighted vs equal split on uneven workers
    cp_gather_bytes           2*b*s*(kv/t)*hd*e          K and V one block's context-parallel all-gather returns
    ep_dispatch_bytes         b*s*k*(d/t)*e              token copies one GPU sends in one block's MoE dispatch

Run it:

    llama-course quiz --n 3               # asks on the terminal, grades with a relative tolerance
    llama-course quiz --n 5 --seed 7 --lang zh --answers   # prints questions with answers
"""

from __future__ import annotations

import math
import random
import sys
from collections.abc import Callable
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

from llama_course.commands.quiz_variants import (  # noqa: F401 (the quiz's variants, re-exported)
    VARIANTS,
    Variant,
    draw_variant,
    generate_variant,
)

BANK_PATH = Path(__file__).parents[1] / "interview" / "bank.yaml"

CONCEPTS = (
    "llama_basics", "collectives", "data_parallel", "tensor_parallel", "pipeline_parallel", "parallel_3d",
    "parameter_server", "sync_async", "load_balancing", "fault_tolerance", "communication_compression",
    "model_compression", "cluster_scheduling", "profiling", "context_parallel",
    "expert_parallel",
)
"""The concept map of docs/design.md, in order: concept i+1 is `labs/{i+1:02d}_<concept>.ipynb`."""

RELATIVE_TOLERANCE = 0.02
"""An answer within 2% of the exact value is graded correct (rounding in mental arithmetic is fine)."""


def lab_path(concept: str) -> str:
    """`labs/NN_<concept>.ipynb` of a concept of the map."""
    return f"labs/{CONCEPTS.index(concept) + 1:02d}_{concept}.ipynb"


def load_bank(path: Path | str | None = None) -> dict:
    """The interview bank as a dict: `article_errata` and `questions` (see bank.yaml's header)."""
    import yaml

    with open(path or BANK_PATH, encoding="utf-8") as f:
        return yaml.safe_load(f)


def seed_numbers(entry: dict) -> list:
    """The seed question numbers an entry answers: [n], the merged list, or [] for a question the article
    does not ask (a concept it does not cover)."""
    if "seed_questions" in entry:
        return list(entry["seed_questions"])
    return [entry["seed_question"]] if "seed_question" in entry else []


# ---------------------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------------------
# Grading and the command line


def parse_number(text: str) -> float | None:
    """A number typed by a person: `0.25`, `25%`, `3/7`, `1.2e3`, `1,024`; None when it is not one."""
    s = text.strip().replace(",", "").replace("_", "")
    if not s:
        return None
    scale = 1.0
    if s.endswith("%"):
        s, scale = s[:-1].strip(), 0.01
    try:
        return float(Fraction(s)) * scale if "/" in s else float(s) * scale
    except (ValueError, ZeroDivisionError):
        return None


def is_correct(given: float | None, answer: float, rel_tol: float = RELATIVE_TOLERANCE) -> bool:
    """True when `given` is within `rel_tol` of `answer` (absolute 1e-9 around zero)."""
    return given is not None and math.isclose(given, answer, rel_tol=rel_tol, abs_tol=1e-9)


@lru_cache(maxsize=1)
def variant_entries() -> dict:
    """{variant name: [bank entries that name it]}, in bank order."""
    found: dict = {}
    for entry in load_bank()["questions"]:
        for name in entry.get("variants", []):
            found.setdefault(name, []).append(entry)
    return found


def draw_quiz(n: int, rng: random.Random) -> list:
    """n (Variant, entry) pairs: each variant once before any repeats, attached to one entry that names it."""
    names = list(variant_entries())
    picked: list = []
    while len(picked) < n:
        batch = names[:]
        rng.shuffle(batch)
        picked.extend(batch[: n - len(picked)])
    return [(draw_variant(name, rng), rng.choice(variant_entries()[name])) for name in picked]


LABELS = {
    "en": dict(question="Question", seed="seed question", answer="Answer", why="Why", correct="correct",
               wrong="not quite", score="Score", read="Read more", prompt="your answer", skip="skipped"),
    "zh": dict(question="题目", seed="原文题号", answer="答案", why="解析", correct="正确", wrong="不对",
               score="得分", read="延伸阅读", prompt="你的答案", skip="跳过"),
}


def _header(i: int, variant: Variant, entry: dict, lang: str) -> str:
    lab = LABELS[lang]
    seeds = "/".join(str(s) for s in seed_numbers(entry))
    return f"[{i}] {lab['question']} ({lab['seed']} {seeds}, {entry['concept']}, {variant.name})"


def _answer_line(variant: Variant, lang: str) -> str:
    unit = f" {variant.unit}" if variant.unit else ""
    return f"{LABELS[lang]['answer']}: {variant.answer:.4g}{unit}"


def print_with_answers(items: list, lang: str, out=None) -> None:
    """Print each question followed by its answer and explanation (non-interactive)."""
    out = out or sys.stdout
    for i, (variant, entry) in enumerate(items, 1):
        print(_header(i, variant, entry, lang), file=out)
        print(variant.question[lang], file=out)
        print(_answer_line(variant, lang), file=out)
        print(f"{LABELS[lang]['why']}: {variant.explanation[lang]}", file=out)
        print(f"{LABELS[lang]['read']}: {entry['links']['docs']}", file=out)
        print(file=out)


def run_interactive(items: list, lang: str, input_fn: Callable[[str], str] = input, out=None) -> int:
    """Ask each question, grade the typed number, explain; returns the number answered correctly."""
    out = out or sys.stdout
    lab, score = LABELS[lang], 0
    for i, (variant, entry) in enumerate(items, 1):
        print(_header(i, variant, entry, lang), file=out)
        print(variant.question[lang], file=out)
        try:
            given = parse_number(input_fn(f"{lab['prompt']}> "))
        except EOFError:
            given = None
        ok = is_correct(given, variant.answer)
        score += ok
        verdict = lab["correct"] if ok else (lab["wrong"] if given is not None else lab["skip"])
        print(f"{verdict}. {_answer_line(variant, lang)}", file=out)
        print(f"{lab['why']}: {variant.explanation[lang]}", file=out)
        print(f"{lab['read']}: {entry['links']['docs']}", file=out)
        print(file=out)
    print(f"{lab['score']}: {score}/{len(items)}", file=out)
    return score


def cli(args) -> int:
    """`llama-course quiz [--n N] [--seed S] [--lang en|zh] [--answers]`."""
    n = getattr(args, "n", 3) or 3
    lang = getattr(args, "lang", "en") or "en"
    seed = getattr(args, "seed", None)
    if seed is None:
        seed = random.SystemRandom().randrange(10**6)
    rng = random.Random(seed)
    items = draw_quiz(n, rng)
    print(f"# llama-course quiz --n {n} --seed {seed} --lang {lang}   (same seed, same numbers)")
    print()
    if getattr(args, "answers", False) or not sys.stdin.isatty():
        print_with_answers(items, lang)
        return 0
    run_interactive(items, lang)
    return 0
