"""The `cpu` profile: where `llama-course bench` keeps what it measured on this machine, its defaults, and
the measured curves (gloo collectives, point-to-point sends, RPC round trips, process scaling) that
`simulator.hardware` reads a CPU "cluster" from (no torch here).

    python -c "from simulator.cpu_profile import cpu_profile_path; print(cpu_profile_path())"
"""

from __future__ import annotations

import json
import os

G = 1e9
US = 1e-6

PROFILE_DIR = os.path.join(os.path.dirname(__file__), "profiles")
CPU_PROFILE = os.path.join(PROFILE_DIR, "cpu.json")

DEFAULT_CPU_PROFILE = {
    "name": "cpu",
    "note": "default profile: 2-core machine, gloo over shared memory (../shared/reference/cpu-gloo-notes.md); "
            "`llama-course bench` overwrites it with measurements",
    "peak_tflops": {"fp32": 0.05, "bf16": 0.01, "fp16": 0.005},
    "matmul_efficiency": 0.6,
    "memory_GB": 24,
    "memory_shared": True,
    "memory_bandwidth_GBps": 10,
    "memory_efficiency": 0.5,
    "kernel_overhead_us": 20,
    "intra_node": {"bandwidth_GBps": 0.9, "latency_us": 1200},
    "inter_node": {"bandwidth_GBps": 0.1, "latency_us": 2000},
    "link_efficiency": 1.0,
}


def user_cpu_profile_path() -> str:
    """Where `llama-course bench` writes this machine's profile: $LLAMA_COURSE_CPU_PROFILE, else
    $LLAMA_COURSE_CACHE/cpu_profile.json (default ~/.cache/llama-course/cpu_profile.json)."""
    env = os.environ.get("LLAMA_COURSE_CPU_PROFILE")
    if env:
        return env
    cache = os.environ.get("LLAMA_COURSE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "llama-course")
    return os.path.join(cache, "cpu_profile.json")


def cpu_profile_path() -> str:
    """The `cpu` profile in use: the one `bench` wrote for this machine if there is one, else the shipped one."""
    user = user_cpu_profile_path()
    return user if os.path.exists(user) else CPU_PROFILE


def value_or_none(value, scale: float = 1.0):
    """A profile's number times `scale`, or None where the profile has none."""
    return None if value is None else float(value) * scale


def attention_cost_of(value) -> tuple | None:
    """Hardware.attention_cost from a profile's {"forward" | "backward": {"fixed_us", "ns_per_score",
    "ns_per_score_dim"}} (`calibration.fit_attention`), or None."""
    if not value:
        return None
    return tuple((float(value[p]["fixed_us"]) * US, float(value[p]["ns_per_score"]) * 1e-9,
                  float(value[p]["ns_per_score_dim"]) * 1e-9) for p in ("forward", "backward"))


def measured_curve(points) -> list | None:
    """Sorted [(bytes, seconds)] of a measured curve in a profile, or None."""
    return sorted((float(b), float(t)) for b, t in points) if points else None


def rpc_curves_of(value) -> dict | None:
    """{workers: curve} from a profile's rpc_round_trip_seconds ({"1": [...], "2": [...]}, or one curve)."""
    if not value:
        return None
    if isinstance(value, list):
        return {1: measured_curve(value)}
    return {int(k): measured_curve(v) for k, v in value.items() if v} or None


def saturating(points: dict, k: float) -> float:
    """{processes: value} measured at a few process counts, interpolated at k and held beyond the last."""
    pts = sorted((float(n), float(v)) for n, v in points.items())
    return interpolate(pts, k) if k <= pts[-1][0] else pts[-1][1]


def between_counts(curves: dict, n: float, x: float, scale) -> float:
    """A measured {process count: [(x, seconds)]} table read at x for n processes: interpolated between the
    two nearest counts; outside them, the nearest count's curve times scale(n, that count)."""
    counts = sorted(curves)
    if n <= counts[0] or n >= counts[-1]:
        ref = counts[0] if n <= counts[0] else counts[-1]
        return interpolate(curves[ref], x) * scale(n, ref)
    hi = next(k for k in counts if k >= n)
    lo = max(k for k in counts if k <= n)
    t0, t1 = interpolate(curves[lo], x), interpolate(curves[hi], x)
    return t0 if hi == lo else t0 + (n - lo) / (hi - lo) * (t1 - t0)


def interpolate(curve: list, x: float) -> float:
    """Piecewise-linear y(x) through sorted [(x, y)] points; the end segments continue beyond them."""
    if len(curve) == 1:
        return curve[0][1]
    for (x0, y0), (x1, y1) in zip(curve, curve[1:]):
        if x <= x1 or (x1, y1) == curve[-1]:
            return max(0.0, y0 + (y1 - y0) * (x - x0) / (x1 - x0))
    return curve[-1][1]


def collective_curves_of(prof: dict, key: str = "all_reduce_seconds") -> dict:
    """{implementation: {n: [(bytes, seconds)]}} from a profile: the measured all-reduce curves
    (`key`), else the alpha-beta pair of "allreduce" (latency_us_N, busbw_GBps_N) as a line."""
    curves = {}
    for impl, by_n in (prof.get(key) or {}).items():
        table = {int(n): sorted((float(b), float(t)) for b, t in pts) for n, pts in by_n.items() if pts}
        if table:
            curves[impl] = table
    if not curves and prof.get("allreduce") and key == "all_reduce_seconds":
        entries, table = prof["allreduce"], {}
        for key, value in entries.items():
            if key.startswith("latency_us_"):
                n = int(key.rsplit("_", 1)[1])
                bw = entries.get(f"busbw_GBps_{n}")
                if bw:
                    lat, big = float(value) * US, 1e9
                    table[n] = [(0.0, lat), (big, lat + 2 * (n - 1) / n * big / (float(bw) * G))]
        if table:
            curves["gloo"] = table
    return curves


def write_cpu_profile(values: dict, path: str = CPU_PROFILE) -> str:
    """Write (or extend) the cpu profile; `llama-course bench` calls this with what it measured."""
    prof = dict(DEFAULT_CPU_PROFILE)
    if os.path.exists(path):
        with open(path) as f:
            prof.update(json.load(f))
    prof.update(values)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(prof, f, indent=2)
        f.write("\n")
    return path
