"""The documentation site: mkdocs.yml, the docs hooks, the generated interview pages, a strict build."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONCEPTS = [
    "llama_basics", "collectives", "data_parallel", "tensor_parallel", "pipeline_parallel", "parallel_3d",
    "parameter_server", "sync_async", "load_balancing", "fault_tolerance", "communication_compression",
    "model_compression", "cluster_scheduling", "profiling", "context_parallel",
    "expert_parallel",
]


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Loader(yaml.SafeLoader):
    """mkdocs.yml may use !ENV and similar tags; read them as plain values."""


_Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
_Loader.add_multi_constructor("tag:yaml.org,2002:python/name:", lambda loader, suffix, node: None)   # mermaid fence


def _nav_paths(nav) -> list:
    out = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        out.extend(_nav_paths(value) if isinstance(value, list) else [value])
    return out


def test_interview_pages_are_up_to_date():
    gen = _load(ROOT / "scripts" / "gen_interview_docs.py", "_gen_interview_docs")
    assert gen.main(["--check"]) == 0, "run: python scripts/gen_interview_docs.py"


def test_interview_pages_cover_every_seed_question():
    for lang in ("en", "zh"):
        text = (ROOT / "docs" / "interview" / f"{lang}.md").read_text(encoding="utf-8")
        for n in range(1, 31):
            assert f"[{n}]" in text or f"[{n}/" in text or f"/{n}]" in text, f"{lang}: seed question {n}"


def test_chinese_flow_joins_wrapped_lines():
    gen = _load(ROOT / "scripts" / "gen_interview_docs.py", "_gen_interview_docs2")
    assert gen.flow("第一行\n第二行", "zh") == "第一行第二行"
    assert gen.flow("每个\nTransformer 块", "zh") == "每个 Transformer 块"
    assert gen.flow("列表：\n- 一\n- 二", "zh") == "列表：\n- 一\n- 二"
    assert gen.flow("系列， 架构", "zh") == "系列，架构"
    assert gen.flow("two\nlines", "en") == "two\nlines"


def test_nav_lists_every_page_and_concept():
    config = yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader=_Loader)
    paths = _nav_paths(config["nav"])
    for concept in CONCEPTS:
        assert f"concepts/{concept}.md" in paths
        assert (ROOT / "docs" / "concepts" / f"{concept}.md").exists()
    for page in ["index.md", "getting-started.md", "cli.md", "simulator/validation.md", "simulator/speed.md",
                 "benchmarks.md", "cluster.md", "simulator/index.md", "gpu.md", "interview/en.md", "interview/zh.md", "instructor.md",
                 "labs/index.md", "api/index.md"]:
        assert page in paths and (ROOT / "docs" / page).exists(), page


def test_cli_page_shows_every_command():
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    for command in ["simulate", "train", "compare", "plan", "bench", "eval", "compress", "generate", "grade",
                    "quiz"]:
        assert f"## {command}" in text and f"llama-course {command}" in text, command


def test_concept_pages_end_with_generated_links():
    for concept in CONCEPTS:
        assert "<!-- concept-links -->" in (ROOT / "docs" / "concepts" / f"{concept}.md").read_text()
    hooks = _load(ROOT / "scripts" / "mkdocs_hooks.py", "_mkdocs_hooks")
    links = hooks.concept_links("collectives")
    assert "labs/exercises/collectives.py" in links and "2.1 `ring_all_reduce_bytes`" in links
    assert "../interview/en.md#q-communication_optimisation" in links
    table = hooks.labs_table()
    assert table.count("\n") == len(CONCEPTS) + 1


def test_hooks_render_executed_copy_only_when_fresh(tmp_path, monkeypatch):
    hooks = _load(ROOT / "scripts" / "mkdocs_hooks.py", "_mkdocs_hooks2")
    ex = hooks._execute_labs()
    labs, executed = tmp_path / "labs", tmp_path / "build"
    labs.mkdir()
    executed.mkdir()
    monkeypatch.setattr(hooks, "LABS", labs)
    monkeypatch.setattr(hooks, "EXECUTED", executed)
    nb = labs / "02_collectives.ipynb"
    nb.write_text(json.dumps({"cells": [{"cell_type": "markdown", "source": ["# 02 Collectives\n"]}],
                              "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    assert hooks.lab_notebooks() == [nb] and hooks.lab_title(nb) == "02 Collectives"
    assert hooks.rendered_copy(nb, "code") == nb
    copy = executed / nb.name
    copy.write_text(json.dumps({"cells": [], "metadata": {"llama_course": {"input_sha256": ex.input_hash(nb, "code")}}}))
    assert hooks.rendered_copy(nb, "code") == copy
    assert hooks.rendered_copy(nb, "other code") == nb  # the package changed: the executed copy is stale
    nb.write_text(nb.read_text() + " ")                 # the lab changed: the executed copy is stale
    assert hooks.rendered_copy(nb, "code") == nb


def test_drawings_are_fresh_drawn_from_the_code_and_on_their_pages(tmp_path):
    """docs/concepts/img/*.svg are what llama_course.core.drawings writes today (byte for byte), the pipeline
    drawing holds every F and B of the simulator's 1F1B schedule, the zero-bubble one every B and W of its ZB-H1
    lanes, and every drawing is on a concept page."""
    from llama_course.core import drawings

    written = drawings.write_drawings(tmp_path)
    img = ROOT / "docs" / "concepts" / "img"
    pages = "".join((ROOT / "docs" / "concepts" / f"{c}.md").read_text(encoding="utf-8") for c in CONCEPTS)
    for path in written:
        committed = img / path.name
        assert committed.exists() and committed.read_bytes() == path.read_bytes(), \
            f"{path.name} is stale: python -m llama_course.core.drawings docs/concepts/img"
        assert f"img/{path.name}" in pages, f"{path.name} is on no concept page"
    pipeline = (img / "pipeline_parallel.svg").read_text(encoding="utf-8")
    p, m = 4, 6
    assert len(re.findall(r">F\d+<", pipeline)) == p * m and len(re.findall(r">B\d+<", pipeline)) == p * m
    zero_bubble = (img / "zero_bubble.svg").read_text(encoding="utf-8").split('<g id="zero_bubble">')[1]
    assert len(re.findall(r">W\d+<", zero_bubble)) == p * m and len(re.findall(r">B\d+<", zero_bubble)) == p * m
    grid = (img / "parallel_3d.svg").read_text(encoding="utf-8")
    assert "tp group [0, 1]" in grid and "dp groups [[0, 2], [1, 3], [4, 6], [5, 7]]" in grid


CITATION = re.compile(r"\b[A-Z][A-Za-z-]+ et al\.,? (?:19|20)\d\d\b|\b(?:Young|Daly) (?:19|20)\d\d\b")


def _cited_texts():
    for path in sorted((ROOT / "docs").rglob("*.md")):
        yield path.relative_to(ROOT), path.read_text(encoding="utf-8")
    for nb in sorted((ROOT / "labs").glob("[0-9][0-9]_*.ipynb")):
        cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
        yield nb.relative_to(ROOT), "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")


def test_every_cited_paper_has_a_link():
    hooks = _load(ROOT / "scripts" / "mkdocs_hooks.py", "_mkdocs_hooks4")
    papers = hooks.papers()
    assert all(p["url"].startswith("https://") and p["title"] for p in papers)
    known = [hooks.citation_pattern(p["cite"]) for p in papers]
    missing = {(str(path), c) for path, text in _cited_texts() for c in CITATION.findall(text)
               if not any(k.fullmatch(c) for k in known)}
    assert not missing, f"add these to docs/papers.yaml: {sorted(missing)}"
    linked = hooks.link_citations("PowerSGD (Vogels et al. 2019) and LLaMA (Touvron et al., 2023)")
    assert "[Vogels et al. 2019](https://arxiv.org/abs/1905.13727)" in linked
    assert "[Touvron et al., 2023](https://arxiv.org/abs/2302.13971)" in linked
    assert hooks.link_citations(linked) == linked            # a linked citation is not linked again


def _smoke_lab(tree: Path, hooks) -> None:
    """A lab 99_smoke.ipynb in labs/, and its 'executed' copy (with an output) in build/labs/."""
    ex = hooks._execute_labs()
    cells = [{"id": "a1", "cell_type": "markdown", "metadata": {}, "source": ["# 99 Smoke lab\n"]},
             {"id": "a2", "cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [],
              "source": ["6 * 7"]}]
    nb = {"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    source = tree / "labs" / "99_smoke.ipynb"
    source.write_text(json.dumps(nb))
    cells[1]["outputs"] = [{"output_type": "execute_result", "execution_count": 1, "metadata": {},
                            "data": {"text/plain": ["4242424242"]}}]
    nb["metadata"]["llama_course"] = {"input_sha256": ex.input_hash(source, ex.code_hash(tree))}
    (tree / "build" / "labs").mkdir(parents=True, exist_ok=True)
    (tree / "build" / "labs" / "99_smoke.ipynb").write_text(json.dumps(nb))


@pytest.fixture(scope="module")
def built_site(tmp_path_factory):
    """`mkdocs build --strict` of a copy of this tree with its executed labs plus a smoke lab; returns the
    site folder. The labs are executed first (scripts/execute_labs.py; a copy made from the same notebook and
    code is reused, so CI executes each lab once for this and tests/test_labs.py together)."""
    mkdocs = Path(sys.executable).with_name("mkdocs")
    if not mkdocs.exists():
        mkdocs = shutil.which("mkdocs")
    assert mkdocs, "mkdocs is a dev dependency: pip install -e '.[dev]'"
    ex = _load(ROOT / "scripts" / "execute_labs.py", "_execute_labs_for_site")
    ex.run(sorted((ROOT / "labs").glob("[0-9][0-9]_*.ipynb")), log=lambda msg: None)   # failures: test_labs
    tmp_path = tmp_path_factory.mktemp("docs")
    tree = tmp_path / "tree"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints")
    for name in ["docs", "scripts", "labs", "llama_course", "simulator", "solutions", "benchmarks", "configs"]:
        shutil.copytree(ROOT / name, tree / name, ignore=ignore)
    if ex.OUT.exists():
        shutil.copytree(ex.OUT, tree / "build" / "labs")
    shutil.copy(ROOT / "mkdocs.yml", tree / "mkdocs.yml")
    _smoke_lab(tree, _load(tree / "scripts" / "mkdocs_hooks.py", "_mkdocs_hooks3"))
    site = tmp_path / "site"
    proc = subprocess.run([str(mkdocs), "build", "--strict", "-d", str(site)], cwd=tree, capture_output=True,
                          text=True, timeout=600, env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin",
                                                       "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return site


# the first test to use built_site pays for executing the 14 labs (cached for tests/test_labs.py): minutes
@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_mkdocs_build_strict(built_site):
    site = built_site
    home = re.sub(r"<[^>]+>", "", (site / "index.html").read_text(encoding="utf-8"))
    assert "make demo" in home and "make test" in home
    for concept in CONCEPTS:
        assert (site / "concepts" / concept / "index.html").exists()
    zh = (site / "interview" / "zh" / "index.html").read_text(encoding="utf-8")
    assert "面试题库" in zh and 'id="q-parallel_strategies"' in zh
    assert (site / "api" / "simulator.config" / "index.html").exists()
    smoke = (site / "labs" / "99_smoke" / "index.html").read_text(encoding="utf-8")
    assert "4242424242" in smoke, "the lab was not rendered from its executed copy"
    assert "99 Smoke lab" in (site / "labs" / "index.html").read_text(encoding="utf-8")   # in the nav


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_site_has_lab_figures_drawings_math_and_links_offline(built_site):
    """Every lab page carries its executed outputs and figures; concept pages their drawings; MathJax is
    served by the site itself and no page loads a script from the network; citations link to the papers."""
    site = built_site
    for nb in sorted((ROOT / "labs").glob("[0-9][0-9]_*.ipynb")):
        page = (site / "labs" / nb.stem / "index.html").read_text(encoding="utf-8")
        assert page.count("<img") >= 1 and "data:image/png;base64" in page, f"{nb.stem}: no figure on its page"
        assert "Answers from this run" in page
    data_parallel = (site / "concepts" / "data_parallel" / "index.html").read_text(encoding="utf-8")
    assert 'src="../img/data_parallel.svg"' in data_parallel and (site / "concepts" / "img" / "zero3.svg").exists()
    assert (site / "assets" / "mathjax" / "MathJax.js").exists()
    assert 'class="arithmatex"' in (site / "concepts" / "collectives" / "index.html").read_text(encoding="utf-8")
    for page in site.rglob("*.html"):
        assert not re.search(r"<script[^>]*\bsrc=\"https?://", page.read_text(encoding="utf-8")), page
    compression = (site / "concepts" / "communication_compression" / "index.html").read_text(encoding="utf-8")
    assert 'href="https://arxiv.org/abs/1905.13727"' in compression                      # Vogels et al. 2019
    references = (site / "references" / "index.html").read_text(encoding="utf-8")
    assert references.count('href="https://') >= len(yaml.safe_load((ROOT / "docs" / "papers.yaml").read_text()))


def _serve(folder: Path):
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def _browser_flags(tmp_path: Path) -> list:
    return ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,900", "--virtual-time-budget=10000",
            "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-quic"]


def _need_chromium():
    if _chromium() is None:
        message = "needs Debian's chromium package (`make system-deps` installs it as root)"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)


# Draws each Chinese character of the zh page's title in that title's own font stack, and two private-use
# code points no font has: a character drawn like them is a box ("tofu"); real glyphs all differ.
CJK_PROBE = """<!doctype html><html><head><meta charset="utf-8"><title>pending</title></head><body>
<iframe id="page" src="interview/zh/" width="1000" height="600"></iframe><script>
function pixels(ch, font) {
  const c = document.createElement("canvas"); c.width = 64; c.height = 64;
  const g = c.getContext("2d"); g.fillStyle = "#fff"; g.fillRect(0, 0, 64, 64);
  g.fillStyle = "#000"; g.font = "48px " + font; g.textBaseline = "top"; g.fillText(ch, 4, 4);
  return Array.from(g.getImageData(0, 0, 64, 64).data).join(",");
}
document.getElementById("page").addEventListener("load", function () {
  const doc = this.contentDocument, h1 = doc.querySelector("article h1") || doc.querySelector("h1");
  const family = doc.defaultView.getComputedStyle(h1).fontFamily;
  const chars = Array.from(new Set(Array.from(h1.textContent).filter(ch => /[\\u4e00-\\u9fff]/.test(ch))));
  const tofu = [pixels("\\uE000", family), pixels("\\uE001", family)];
  const shapes = chars.map(ch => pixels(ch, family));
  document.title = "CJK chars=" + chars.length + " distinct=" + new Set(shapes).size + " tofu=" +
    shapes.filter(s => tofu.includes(s)).length;
});
</script></body></html>"""


@pytest.mark.slow
def test_chinese_page_renders_real_glyphs_not_boxes(built_site, tmp_path):
    """The zh interview page's title drawn in its own font stack: every character a distinct glyph, none the
    box a missing glyph gets. Fails where no CJK font is installed (`make system-deps` installs one)."""
    _need_chromium()
    (built_site / "cjk_probe.html").write_text(CJK_PROBE, encoding="utf-8")
    server, base = _serve(built_site)
    try:
        dom = subprocess.run([_chromium(), *_browser_flags(tmp_path), "--dump-dom", f"{base}/cjk_probe.html"],
                             capture_output=True, text=True, timeout=120, check=True).stdout
    finally:
        server.shutdown()
    found = re.search(r"CJK chars=(\d+) distinct=(\d+) tofu=(\d+)", dom)
    assert found, "the probe did not run: " + dom[:300]
    chars, distinct, tofu = map(int, found.groups())
    assert chars >= 4 and tofu == 0 and distinct == chars, \
        f"Chinese renders as boxes ({tofu} of {chars} characters): install a CJK font (`make system-deps`)"


@pytest.mark.slow
def test_math_is_typeset_by_the_sites_own_mathjax(built_site, tmp_path):
    _need_chromium()
    server, base = _serve(built_site)
    try:
        for page in ("concepts/collectives/", "labs/05_pipeline_parallel/"):
            dom = subprocess.run([_chromium(), *_browser_flags(tmp_path), "--dump-dom", f"{base}/{page}"],
                                 capture_output=True, text=True, timeout=120, check=True).stdout
            assert dom.count('class="MathJax"') >= 5, f"{page}: formulas not typeset"
    finally:
        server.shutdown()


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.mark.slow
def test_site_renders_in_headless_chromium(built_site, tmp_path):
    """Serve the site over HTTP, open the home page and a lab page in headless Chromium: screenshot + headings."""
    if _chromium() is None:
        message = "needs Debian's chromium package (`make system-deps` installs it as root)"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(built_site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,900", "--virtual-time-budget=3000",
             "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-quic"]
    try:
        for page, heading in [("", "llama-course"), ("labs/99_smoke/", "99 Smoke lab")]:
            shot = tmp_path / f"{page.strip('/').replace('/', '_') or 'home'}.png"
            subprocess.run([_chromium(), *flags, f"--screenshot={shot}", f"{base}/{page}"], capture_output=True,
                           timeout=120, check=True)
            assert shot.exists() and shot.stat().st_size > 10_000, f"no screenshot of /{page}"
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            dom = subprocess.run([_chromium(), *flags, "--dump-dom", f"{base}/{page}"], capture_output=True,
                                 text=True, timeout=120, check=True).stdout
            headings = [re.sub(r"<[^>]+>|¶", "", h).strip() for h in re.findall(r"<h1[^>]*>(.*?)</h1>", dom, re.S)]
            assert any(heading in h for h in headings), (page, headings)
            assert "md-nav" in dom                        # the theme's navigation was rendered
    finally:
        server.shutdown()
