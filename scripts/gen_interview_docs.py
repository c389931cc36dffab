"""Generate docs/interview/en.md and docs/interview/zh.md from llama_course/interview/bank.yaml.

    python scripts/gen_interview_docs.py           # write both pages
    python scripts/gen_interview_docs.py --check   # exit 1 if either page is out of date (tests run this)

The pages are generated, never edited by hand: change the bank, then rerun. Links go to the concept pages,
and to a lab only once its notebook exists (so the output changes when a lab lands; rerun then).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from llama_course.commands.quiz import CONCEPTS, VARIANTS, load_bank, seed_numbers  # noqa: E402
from simulator.cli_args import Parser  # noqa: E402

OUT = ROOT / "docs" / "interview"

TEXT = {
    "en": dict(
        title="Interview question bank",
        other="[中文版](zh.md)",
        intro=("The source article ends with 30 interview questions whose answers are one-line lists, "
               "sometimes wrong. Here each is answered properly: what is true, with the formulas that "
               "matter, and where the article misleads. Four questions appear twice in the article "
               "(9/21, 13/23, 10/25, 12/18) and are answered once. Questions marked + go beyond the article, on "
               "concepts it does not cover (context parallelism, mixtures of experts and expert parallelism). Questions with a numeric side have quiz "
               "variants that draw fresh numbers: `llama-course quiz --n 5`."),
        errata="About the source article",
        index="All questions",
        seed="seed",
        question="question",
        concept="concept",
        related="related",
        merged="Merged",
        misleads="Where the article misleads",
        quiz="Quiz variants",
        quiz_cmd="practise with `llama-course quiz`",
        lab="Lab",
        lab_missing="in preparation",
        exercises="Exercises",
        generated="Generated from `llama_course/interview/bank.yaml` by `scripts/gen_interview_docs.py`; edit the bank, not this page.",
    ),
    "zh": dict(
        title="面试题库",
        other="[English](en.md)",
        intro=("原文最后列出 30 道面试题，答案只是一行罗列，有些还是错的。这里逐题给出正确而深入的回答：事实是什么、"
               "关键公式，以及原文哪里有误导。原文有四道题重复出现（9/21、13/23、10/25、12/18），各只回答一次。"
               "标 + 的题目超出原文，涉及原文没有讲到的概念（上下文并行、混合专家与专家并行）。"
               "带数值的题目有随机出题的练习：`llama-course quiz --n 5 --lang zh`。"),
        errata="关于原文",
        index="题目总览",
        seed="原文题号",
        question="题目",
        concept="概念",
        related="相关概念",
        merged="合并说明",
        misleads="原文的误导之处",
        quiz="随机数值练习",
        quiz_cmd="用 `llama-course quiz --lang zh` 练习",
        lab="实验",
        lab_missing="准备中",
        exercises="练习",
        generated="本页由 `scripts/gen_interview_docs.py` 从 `llama_course/interview/bank.yaml` 生成；请修改题库而不是本页。",
    ),
}


CJK = "\u3000-\u303f\u4e00-\u9fff\uff00-\uffef"
CJK_PUNCT = "\u3000-\u303f\uff00-\uffef"
CJK_GAP = re.compile(f"([{CJK}]) +(?=[{CJK}])")
BLOCK_START = re.compile(r"^(\s*([-*>|#]|\d+\.\s|```|!!!)|\s*$)")


def flow(text: str, lang: str) -> str:
    """Chinese prose: join wrapped lines without the space a browser would show between two characters."""
    if lang != "zh":
        return text.strip()
    lines: list = []
    for line in text.strip().splitlines():
        prev = lines[-1] if lines else ""
        joinable = prev.strip() and not BLOCK_START.match(line) and not prev.lstrip().startswith("|")
        if joinable:
            cur = line.strip()
            both_cjk = re.match(f"[{CJK}]", prev[-1]) and re.match(f"[{CJK}]", cur[0])
            punctuation = re.match(f"[{CJK_PUNCT}]", prev[-1]) or re.match(f"[{CJK_PUNCT}]", cur[0])
            sep = "" if both_cjk or punctuation else " "
            lines[-1] = prev + sep + cur
        else:
            lines.append(line)
    return CJK_GAP.sub(r"\1", "\n".join(lines))


def _seeds(entry: dict) -> str:
    """The seed numbers (9/21), or + for a question beyond the article."""
    return "/".join(str(n) for n in seed_numbers(entry)) or "+"


def _indent(text: str, spaces: int = 4) -> str:
    return "\n".join((" " * spaces + line) if line.strip() else "" for line in text.strip().splitlines())


def render(bank: dict, lang: str) -> str:
    t = TEXT[lang]
    out = [f"# {t['title']}", "", f"{t['other']}", "", t["intro"], "", f"*{t['generated']}*", ""]
    out += [f"## {t['errata']}", ""]
    for item in bank["article_errata"]:
        out += [f"- {flow(item[lang], lang)}", ""]
    entries = sorted(bank["questions"], key=lambda e: min(seed_numbers(e), default=len(bank["questions"]) + 31))
    out += [f"## {t['index']}", "", f"| {t['seed']} | {t['question']} | {t['concept']} |", "|---|---|---|"]
    for e in entries:
        question = e["question"][lang].strip().replace("|", "\\|")
        out.append(f"| [{_seeds(e)}](#q-{e['id']}) | {question} | [{e['concept']}](../concepts/{e['concept']}.md) |")
    out.append("")
    for e in entries:
        label = f"{_seeds(e)}." if seed_numbers(e) else _seeds(e)
        out += [f"## {label} {e['question'][lang].strip()} {{#q-{e['id']}}}", ""]
        meta = f"**{t['concept']}:** [{e['concept']}](../concepts/{e['concept']}.md)"
        if e.get("related_concepts"):
            meta += f" · {t['related']}: " + ", ".join(
                f"[{c}](../concepts/{c}.md)" for c in e["related_concepts"])
        out += [meta, ""]
        if "merge_note" in e:
            out += [f"!!! note \"{t['merged']}\"", "", _indent(flow(e["merge_note"][lang], lang)), ""]
        out += [flow(e["answer"][lang], lang), ""]
        if "article_note" in e:
            out += [f"!!! warning \"{t['misleads']}\"", "", _indent(flow(e["article_note"][lang], lang)), ""]
        links = e["links"]
        lab = ROOT / links["lab"]
        lab_md = f"[{lab.name}](../{links['lab']})" if lab.exists() else f"`{links['lab']}` ({t['lab_missing']})"
        footer = [f"**{t['lab']}:** {lab_md}",
                  f"**{t['exercises']}:** " + ", ".join(f"`{x}`" for x in links["exercises"])]
        if e.get("variants"):
            footer.append(f"**{t['quiz']}:** " + ", ".join(f"`{v}`" for v in e["variants"]) + f" ({t['quiz_cmd']})")
        out += [" · ".join(footer[:2]), "", *(footer[2:] and [footer[2], ""])]
    return "\n".join(out).rstrip() + "\n"


def check_bank(bank: dict) -> None:
    """The invariants the pages rely on (tests/test_quiz.py checks them in full)."""
    for e in bank["questions"]:
        assert e["concept"] in CONCEPTS, e["id"]
        for v in e.get("variants", []):
            assert v in VARIANTS, f"{e['id']}: unknown variant {v}"


def main(argv=None) -> int:
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a page is out of date; write nothing")
    args = parser.parse_args(argv)
    bank = load_bank()
    check_bank(bank)
    stale = []
    for lang in ("en", "zh"):
        path = OUT / f"{lang}.md"
        text = render(bank, lang)
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if args.check and stale:
        print("out of date: " + ", ".join(str(p.relative_to(ROOT)) for p in stale)
              + "\nrun: python scripts/gen_interview_docs.py", file=sys.stderr)
        return 1
    for p in stale:
        print(f"wrote {p.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
