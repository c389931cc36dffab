"""The validation page's figure: every published run's prediction error on one axis, validation (out of sample)
and calibration (in sample) apart, grouped by software stack, with the issue's bands (8% and 15%) shaded.

Written by `benchmarks/simulator_validation.py --write docs/simulator/validation.md` beside the page
(docs/simulator/img/validation_errors.svg); SVG by hand (llama_course.core.drawings.Svg, which imports no
torch), so the file is byte-for-byte reproducible and tests/simulator/test_validation.py compares it.
"""

from __future__ import annotations

from llama_course.core.drawings import Svg

LO, HI = -0.30, 0.30                  # the axis; an error beyond it is drawn at the edge with its value
X0, X1 = 400, 828                     # the axis in pixels
LANE, TOP = 14, 84
BANDS = ((0.15, "#eceff1"), (0.08, "#cfd8dc"))
COLORS = {"validation": "#1e88e5", "miss": "#e53935", "calibration": "#757575", "line": "#424242"}


def x_of(error: float) -> float:
    """The pixel of an error on the axis (clamped to its ends)."""
    return X0 + (min(max(error, LO), HI) - LO) / (HI - LO) * (X1 - X0)


def _lanes(calibration: list, validation: list) -> list:
    """[(kind, text, row)]: a heading per set and per stack, then a lane per run, in the page's order."""
    lanes = []
    for title, rows in (("validation (out of sample): never used to choose anything", validation),
                        ("calibration (in sample): these rows chose the constants", calibration)):
        lanes.append(("set", title, None))
        for stack in dict.fromkeys(r["stack"] for r in rows):
            lanes.append(("stack", stack, None))
            lanes += [("run", r["name"], r) for r in rows if r["stack"] == stack]
    return lanes


def error_chart(calibration: list, validation: list) -> str:
    """The SVG: one dot per run (filled: validation, red beyond 15%; hollow: calibration) at its error."""
    lanes = _lanes(calibration, validation)
    bottom = TOP + len(lanes) * LANE
    svg = Svg(860, bottom + 40, "Prediction error of every published run (positive: predicted faster than published)",
              "Filled dots: validation rows, out of sample (red: beyond 15%); hollow: calibration rows, in sample. "
              "Shaded: within 8% and within 15%, the goals of issue 17. Rows that do not fit in memory are named.")
    for limit, fill in BANDS:
        svg.parts.append(f'<rect x="{x_of(-limit):.1f}" y="{TOP - 6}" width="{x_of(limit) - x_of(-limit):.1f}" '
                         f'height="{bottom - TOP + 6}" fill="{fill}"/>')
    for tick in range(-30, 31, 10):
        x = x_of(tick / 100)
        svg.parts.append(f'<line x1="{x:.1f}" y1="{TOP - 6}" x2="{x:.1f}" y2="{bottom}" stroke="'
                         f'{COLORS["line"] if tick == 0 else "#b0bec5"}" stroke-width="{1.2 if tick == 0 else 0.6}"/>')
        for y in (TOP - 10, bottom + 14):
            svg.label(x, y, f"{tick:+d}%" if tick else "0", size=10, anchor="middle", fill="#555")
    for i, (kind, text, row) in enumerate(lanes):
        y = TOP + i * LANE + LANE / 2
        if kind == "set":
            svg.label(12, y + 4, text, size=11, weight="bold")
            continue
        if kind == "stack":
            svg.label(20, y + 4, text, size=10, weight="bold", fill="#555")
            continue
        svg.label(32, y + 4, text if len(text) <= 58 else text[:57] + "...", size=10)
        if row["error"] is None:
            svg.label(x_of(0) + 8, y + 4, f"does not fit ({row['memory_GB']:.1f} of {row['capacity_GB']:.1f} GB)",
                      size=10, fill=COLORS["miss"])
            continue
        e, x = row["error"], x_of(row["error"])
        if row["role"] == "calibration":
            paint = f'fill="white" stroke="{COLORS["calibration"]}" stroke-width="1.5"'
        else:
            paint = f'fill="{COLORS["miss" if abs(e) > 0.15 else "validation"]}"'
        svg.parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" {paint}/>')
        if not LO <= e <= HI:
            svg.label(x + (-8 if e > 0 else 8), y + 4, f"{e:+.0%}", size=10, anchor="end" if e > 0 else "start")
    return svg.text()
