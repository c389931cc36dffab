// MathJax 2 (served from the site itself: scripts/mkdocs_hooks.py copies it from the jupyter-server-mathjax
// package into assets/mathjax/, so formulas render offline). pymdownx.arithmatex (generic mode) wraps the
// Markdown pages' $...$ and $$...$$ as \(...\) and \[...\]; the lab pages (mkdocs-jupyter) add $ delimiters.
// On a lab page the notebook's own MathJax script (same file) runs first: then keep its configuration.
if (!(window.MathJax && window.MathJax.Hub)) window.MathJax = {
  config: ["TeX-AMS-MML_HTMLorMML-full.js", "Safe.js"],
  tex2jax: {inlineMath: [["\\(", "\\)"]], displayMath: [["\\[", "\\]"]], processEscapes: true},
  "HTML-CSS": {availableFonts: ["STIX-Web"], preferredFont: "STIX-Web", webFont: "STIX-Web", imageFont: null},
  messageStyle: "none",
  showMathMenu: false
};
