"""mkdocs hooks: bring the labs and the API reference into the site without copying files into docs/.

- Labs live in labs/NN_<concept>.ipynb, outside docs/. Each is added to the site as labs/NN_<concept>.ipynb
  (mkdocs-jupyter renders it) and to the nav's "Labs" section. If scripts/execute_labs.py has left an
  executed copy in build/labs/ made from this notebook and this code, that copy (outputs and figures) is
  rendered; otherwise the notebook as stored (no outputs). `make docs` executes the stale ones first.
- The API reference gets one generated page per module of llama_course/ and simulator/
  (`::: package.module`, rendered by mkdocstrings), listed under "API reference".
- docs/labs/index.md's `<!-- labs-table -->` becomes a table of the 16 concepts with their lab,
  concept page and exercises, as they exist at build time.
- Result pages in docs/benchmarks/*.md join the nav's "Benchmarks" section; `<!-- benchmark-pages -->` in
  docs/benchmarks.md becomes a list of them.
- docs/design.md's `<!-- capability-table -->` becomes the capability table (simulator/capabilities.py) as
  the code has it, so the page never lags behind a new combination.
- MathJax (2.7, from the jupyter-server-mathjax package) is copied into the site's assets/mathjax/: the
  Markdown pages' `$...$` (pymdownx.arithmatex) and the labs' formulas render offline.
- Citations ("Touvron et al. 2023") on every page, labs included, link to the paper (docs/papers.yaml);
  references.md's `<!-- papers -->` becomes the list of them.
- A concept page's `<!-- concept-links -->` (docs/concepts/<concept>.md) becomes its links: lab, exercises,
  runtime and simulator API pages, interview questions; only to what exists, so the links never dangle.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path

import yaml
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
LABS = ROOT / "labs"
DOCS = ROOT / "docs"
EXECUTED = ROOT / "build" / "labs"
PACKAGES = ("llama_course", "simulator")
CONCEPTS = (
    "llama_basics", "collectives", "data_parallel", "tensor_parallel", "pipeline_parallel", "parallel_3d",
    "parameter_server", "sync_async", "load_balancing", "fault_tolerance", "communication_compression",
    "model_compression", "cluster_scheduling", "profiling", "context_parallel",
    "expert_parallel",
)


def lab_notebooks() -> list:
    """labs/NN_<concept>.ipynb that exist, in order."""
    return sorted(p for p in LABS.glob("[0-9][0-9]_*.ipynb"))


def _execute_labs():
    """scripts/execute_labs.py (it decides what an executed copy was made from), loaded beside this file."""
    spec = importlib.util.spec_from_file_location("_execute_labs", Path(__file__).with_name("execute_labs.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rendered_copy(notebook: Path, code: str | None = None) -> Path:
    """The executed copy in build/labs/ if it was made from this very notebook and code, else the notebook."""
    return EXECUTED / notebook.name if _execute_labs().is_fresh(notebook, EXECUTED, code) else notebook


def lab_title(notebook: Path) -> str:
    """The notebook's first Markdown heading, else 'NN concept'."""
    try:
        cells = json.loads(notebook.read_text(encoding="utf-8")).get("cells", [])
    except json.JSONDecodeError:
        cells = []
    for cell in cells:
        if cell.get("cell_type") == "markdown":
            for line in "".join(cell.get("source", [])).splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    number, _, concept = notebook.stem.partition("_")
    return f"{number} {concept}"


def api_modules() -> list:
    """Dotted names of the public modules of the course's packages."""
    names = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if not path.stem.startswith("_") and "__pycache__" not in path.parts:
                names.append(".".join(path.relative_to(ROOT).with_suffix("").parts))
    return names


def concept_modules(package: str, concept: str, modules) -> list:
    """<package>[.<layer>].<concept> and its _comm sibling, in whichever layer folder they live."""
    return [m for m in modules if m.startswith(package + ".") and m.rsplit(".", 1)[1] in (concept, f"{concept}_comm")]


def benchmark_pages() -> list:
    """docs/benchmarks/*.md, written by the scripts in benchmarks/."""
    return sorted((DOCS / "benchmarks").glob("*.md"))


def _md_title(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return path.stem


def _nav_section(nav: list, title: str) -> list | None:
    for entry in nav:
        if isinstance(entry, dict) and title in entry and isinstance(entry[title], list):
            return entry[title]
    return None


def on_config(config):
    nav = config.nav or []
    labs = _nav_section(nav, "Labs")
    if labs is not None:
        labs.extend({lab_title(nb): f"labs/{nb.name}"} for nb in lab_notebooks())
    benchmarks = _nav_section(nav, "Benchmarks")
    if benchmarks is not None:
        benchmarks.extend({_md_title(p): f"benchmarks/{p.name}"} for p in benchmark_pages())
    api = _nav_section(nav, "API reference")
    if api is not None:
        for package in PACKAGES:
            api.append({package: [{name: f"api/{name}.md"} for name in api_modules() if name.startswith(package + ".")]})
    return config


@event_priority(100)       # before mkdocs-jupyter's on_files, so it wraps the notebooks added here
def on_files(files, config):
    code = _execute_labs().code_hash()
    for nb in lab_notebooks():
        # a plain File whose src_dir/src_uri is the notebook (labs/ or build/labs/): mkdocs-jupyter's wrapper
        # reads abs_src_path through src_dir, so File.generated(abs_src_path=...) would not reach it
        source = rendered_copy(nb, code)
        files.append(File(f"labs/{nb.name}", src_dir=str(source.parent.parent), dest_dir=config.site_dir,
                          use_directory_urls=config.use_directory_urls))
    for name in api_modules():
        files.append(File.generated(config, f"api/{name}.md", content=f"# `{name}`\n\n::: {name}\n"))
    return files


def labs_table(page_dir: str = "labs") -> str:
    rows = ["| # | concept | lab | exercises |", "|---|---|---|---|"]
    for i, concept in enumerate(CONCEPTS, 1):
        nb = LABS / f"{i:02d}_{concept}.ipynb"
        lab = f"[{lab_title(nb)}]({nb.name})" if nb.exists() else "in preparation"
        stub = LABS / "exercises" / f"{concept}.py"
        exercises = f"`labs/exercises/{concept}.py`" if stub.exists() else "in preparation"
        rows.append(f"| {i:02d} | [{concept}](../concepts/{concept}.md) | {lab} | {exercises} |")
    return "\n".join(rows)


# modules beyond <package>.<concept> and <package>.<concept>_comm that belong on a concept's page
RELATED_MODULES = {
    "llama_basics": ["llama_course.core.model", "llama_course.core.data", "llama_course.core.tokenizer",
                     "llama_course.trainer", "llama_course.engine", "simulator.workload", "simulator.compute",
                     "simulator.memory"],
    "collectives": ["llama_course.core.distributed", "simulator.network", "simulator.topology"],
    "data_parallel": ["llama_course.core.optimizers"],
    "parallel_3d": ["llama_course.core.distributed", "simulator.plan"],
    "fault_tolerance": ["llama_course.core.checkpoint"],
    "profiling": ["simulator.trace", "llama_course.core.plots"],
}


def _exercise_numbers(stub: Path) -> list:
    """[(function, 'Exercise N.M')] of a stub module, from its NotImplementedError messages."""
    out = []
    for node in ast.parse(stub.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            match = re.search(r"Exercise (\d+\.\d+)", ast.get_source_segment(stub.read_text(encoding="utf-8"), node) or "")
            out.append((node.name, match.group(1) if match else ""))
    return out


def concept_links(concept: str) -> str:
    i = CONCEPTS.index(concept) + 1
    lines = []
    nb = LABS / f"{i:02d}_{concept}.ipynb"
    lines.append(f"- **Lab:** [{lab_title(nb)}](../labs/{nb.name})" if nb.exists()
                 else f"- **Lab:** `labs/{nb.name}` (in preparation; see [Labs](../labs/index.md))")
    stub = LABS / "exercises" / f"{concept}.py"
    if stub.exists():
        items = ", ".join(f"{num} `{name}`" for name, num in _exercise_numbers(stub))
        lines.append(f"- **Exercises:** `labs/exercises/{concept}.py`: {items}. Graded by "
                     f"`tests/exercises/test_{concept}.py`: `llama-course grade --only {concept}`.")
    else:
        lines.append(f"- **Exercises:** `labs/exercises/{concept}.py` (in preparation)")
    modules = set(api_modules())
    for package, label in (("llama_course", "Runtime API"), ("simulator", "Simulator API")):
        wanted = [*concept_modules(package, concept, sorted(modules)),
                  *[m for m in RELATED_MODULES.get(concept, []) if m.startswith(package + ".")]]
        found = [m for m in dict.fromkeys(wanted) if m in modules]
        if found:
            lines.append(f"- **{label}:** " + ", ".join(f"[`{m}`](../api/{m}.md)" for m in found))
    bank = yaml.safe_load((ROOT / "llama_course" / "interview" / "bank.yaml").read_text(encoding="utf-8"))
    primary = [q for q in bank["questions"] if q["concept"] == concept]
    related = [q for q in bank["questions"] if concept in q.get("related_concepts", [])]
    for label, entries in (("Interview questions", primary), ("Related interview questions", related)):
        if entries:
            refs = []
            for q in entries:
                seeds = "/".join(str(n) for n in q.get("seed_questions", [q.get("seed_question", "+")]))
                refs.append(f"[{seeds}](../interview/en.md#q-{q['id']}) ([中文](../interview/zh.md#q-{q['id']}))")
            lines.append(f"- **{label}** (seed numbers): " + ", ".join(refs))
    return "\n".join(lines)


def capability_table() -> str:
    """simulator/capabilities.py's table as this tree has it, in Markdown (torch-free, imported from ROOT)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    capabilities = importlib.import_module("simulator.capabilities")
    return capabilities.format_table()


def papers() -> list:
    """docs/papers.yaml: [{cite, title, url}] for every paper the docs and labs cite."""
    return yaml.safe_load((DOCS / "papers.yaml").read_text(encoding="utf-8"))


def citation_pattern(cite: str) -> re.Pattern:
    """'Touvron et al. 2023' also matches 'Touvron et al., 2023'; a citation already inside a link is left."""
    *names, year = cite.split()
    return re.compile(r"(?<!\[)" + re.escape(" ".join(names)) + r",? " + year + r"(?![\]\d])")


def link_citations(markdown: str, entries=None) -> str:
    for paper in entries or papers():
        markdown = citation_pattern(paper["cite"]).sub(lambda m, u=paper["url"]: f"[{m.group(0)}]({u})", markdown)
    return markdown


def references_table(entries=None) -> str:
    rows = ["| cited as | paper |", "|---|---|"]
    for paper in sorted(entries or papers(), key=lambda p: p["cite"]):
        rows.append(f"| {paper['cite']} | [{paper['title']}]({paper['url']}) |")
    return "\n".join(rows)


def on_page_markdown(markdown, page, config, files):
    if "<!-- labs-table -->" in markdown:
        markdown = markdown.replace("<!-- labs-table -->", labs_table())
    if "<!-- benchmark-pages -->" in markdown:
        pages = "\n".join(f"- [{_md_title(p)}](benchmarks/{p.name})" for p in benchmark_pages())
        markdown = markdown.replace("<!-- benchmark-pages -->", pages or "*(no results yet)*")
    if "<!-- capability-table -->" in markdown:
        markdown = markdown.replace("<!-- capability-table -->", capability_table())
    if "<!-- papers -->" in markdown:
        markdown = markdown.replace("<!-- papers -->", references_table())
    markdown = link_citations(markdown)
    if "<!-- concept-links -->" in markdown:
        concept = Path(page.file.src_uri).stem
        if concept in CONCEPTS:
            markdown = markdown.replace("<!-- concept-links -->", concept_links(concept))
    return markdown


def on_page_content(html, page, config, files):
    """Lab pages (rendered from notebooks, not Markdown): link their citations too."""
    if not page.file.src_uri.endswith(".ipynb"):
        return html
    for paper in papers():
        html = citation_pattern(paper["cite"]).sub(
            lambda m, u=paper["url"]: f'<a href="{u}">{m.group(0)}</a>', html)
    return html


def mathjax_dir() -> Path:
    """MathJax 2's files as the jupyter-server-mathjax package ships them (a dev dependency)."""
    import jupyter_server_mathjax

    return Path(jupyter_server_mathjax.__file__).parent / "static"


def on_post_build(config):
    """Serve MathJax from the site itself, so formulas render without a network."""
    target = Path(config.site_dir) / "assets" / "mathjax"
    if not (target / "MathJax.js").exists():
        shutil.copytree(mathjax_dir(), target, dirs_exist_ok=True)


def on_serve(server, config, builder):
    for folder in (LABS, EXECUTED, *(ROOT / p for p in PACKAGES)):
        if folder.exists():
            server.watch(str(folder))
    return server
