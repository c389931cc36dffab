"""Reference solutions for lab 14, profiling (labs/exercises/profiling.py has the exercises)."""

from __future__ import annotations


def chrome_events(spans):
    """Exercise 14.1."""
    out = []
    for rank, stream, name, start, duration in spans:
        if duration < 0:
            raise ValueError(f"span {name!r} has a negative duration")
        out.append({"name": name, "ph": "X", "pid": rank, "tid": stream, "ts": start * 1e6, "dur": duration * 1e6})
    return sorted(out, key=lambda e: (e["pid"], e["ts"]))


def _merge(intervals):
    out = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out


def exposed_time(busy, cover):
    """Exercise 14.2: length of merged `busy` minus its intersection with merged `cover`."""
    busy, cover = _merge(busy), _merge(cover)
    total = sum(b - a for a, b in busy)
    overlap = 0.0
    for a, b in busy:
        for c, d in cover:
            overlap += max(0.0, min(b, d) - max(a, c))
    return total - overlap


def step_breakdown(events):
    """Exercise 14.3."""
    spans = [e for e in events if e.get("ph") == "X"]
    if not spans:
        return {k: 0.0 for k in ("compute", "exposed_comm", "bubble", "optimizer", "idle", "step")}

    def union(keep):
        return _merge([(e["ts"] / 1e6, (e["ts"] + e["dur"]) / 1e6) for e in spans if keep(e)])

    compute = union(lambda e: e["tid"] == "compute" and e["name"] != "optimizer")
    comm = union(lambda e: e["tid"] == "comm")
    out = {"compute": sum(b - a for a, b in compute),
           "exposed_comm": exposed_time(comm, compute),
           "bubble": sum(b - a for a, b in union(lambda e: e["tid"] == "bubble")),
           "optimizer": sum(b - a for a, b in union(lambda e: e["name"] == "optimizer"))}
    start = min(e["ts"] for e in spans) / 1e6
    end = max(e["ts"] + e["dur"] for e in spans) / 1e6
    out["step"] = end - start
    out["idle"] = max(0.0, out["step"] - out["compute"] - out["exposed_comm"] - out["bubble"] - out["optimizer"])
    return out


def roofline(flops, bytes_moved, peak_flops, bandwidth):
    """Exercise 14.4."""
    intensity = flops / bytes_moved
    attainable = min(peak_flops, intensity * bandwidth)
    return {"intensity": intensity, "attainable_flops": attainable, "time_s": flops / attainable,
            "bound": "compute" if intensity * bandwidth >= peak_flops else "memory"}


def matmul_intensity(m, k, n, bytes_per_element=2.0):
    """Exercise 14.5."""
    return 2.0 * m * k * n / (bytes_per_element * (m * k + k * n + m * n))


def merge_rank_traces(events, origin_s, group=None):
    """Exercise 14.6."""
    import torch.distributed as dist

    gathered = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, (origin_s, events), group=group)
    start = min(origin for origin, _ in gathered)
    merged = []
    for rank, (origin, rank_events) in enumerate(gathered):
        for e in rank_events:
            merged.append({**e, "pid": rank, "ts": e["ts"] + (origin - start) * 1e6})
    return sorted(merged, key=lambda e: (e["ts"], e["pid"]))
