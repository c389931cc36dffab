"""Exercises for lab 14, profiling: read a step's trace, find its bottleneck, place its kernels on a roofline.

A Chrome trace (trace-event JSON) holds one complete event per span: {"name", "ph": "X", "pid": rank,
"tid": stream, "ts": start in microseconds, "dur": microseconds}. The course's runtime
(llama_course/core/profiling.py) and simulator (simulator/trace.py) write the same format with the same names,
so a measured and a simulated step open side by side in ui.perfetto.dev, and `llama-course compare
--trace-dir` diffs them (llama_course/commands/compare.py). The lab (labs/14_profiling.ipynb) does this for the
tiny model; here you write the analysis.

Replace each `raise NotImplementedError(...)` with your code, then grade yourself:

    llama-course grade --only profiling
"""

from __future__ import annotations


def chrome_events(spans: list) -> list:
    """Exercise 14.1: Chrome trace events from spans `(rank, stream, name, start_s, duration_s)`.

    Return one dict per span: {"name", "ph": "X", "pid": rank, "tid": stream, "ts", "dur"} with ts and dur
    in microseconds, sorted by (pid, ts). Raise ValueError for a negative duration.
    """
    raise NotImplementedError("Exercise 14.1: chrome_events")


def exposed_time(busy: list, cover: list) -> float:
    """Exercise 14.2: how long the intervals `busy` run while no interval of `cover` does.

    Both are lists of (start, end) that may overlap among themselves and come in any order. Exposed
    communication is exposed_time(comm spans, compute spans): the seconds a rank waits on the network with
    nothing to compute, what overlapping communication with backward tries to drive to zero.
    """
    raise NotImplementedError("Exercise 14.2: exposed_time")


def step_breakdown(events: list) -> dict:
    """Exercise 14.3: where one rank's step went, from its Chrome trace events (one rank, one step).

    Return seconds of {"compute", "exposed_comm", "bubble", "optimizer", "idle", "step"}: compute is the
    union of tid "compute" spans other than "optimizer"; optimizer the union of spans named "optimizer";
    exposed_comm is the tid "comm" time not covered by compute (exercise 14.2); bubble the union of tid
    "bubble" spans; step is from the first start to the last end; idle what is left of step after the
    other four, never below zero (a comm span inside a bubble is counted twice). Events other than ph "X"
    are ignored (no "X" event at all: every entry 0). The largest of the four is the bottleneck.
    """
    raise NotImplementedError("Exercise 14.3: step_breakdown")


def roofline(flops: float, bytes_moved: float, peak_flops: float, bandwidth: float) -> dict:
    """Exercise 14.4: the roofline model of one kernel (Williams, Waterman and Patterson 2009).

    Arithmetic intensity I = flops / bytes_moved (FLOP per byte of memory traffic). The kernel can run no
    faster than either roof: attainable FLOP/s = min(peak_flops, I x bandwidth). Return {"intensity",
    "attainable_flops", "time_s" (= flops / attainable), "bound": "compute" or "memory"}. The ridge point
    peak_flops / bandwidth (about 156 FLOP/byte for an A100's bf16 on HBM) separates the two: a large
    matmul lies right of it, RMSNorm, SwiGLU's element-wise product and the optimizer far left.
    At exactly the ridge, say "compute".
    """
    raise NotImplementedError("Exercise 14.4: roofline")


def matmul_intensity(m: int, k: int, n: int, bytes_per_element: float = 2.0) -> float:
    """Exercise 14.5: arithmetic intensity of (m x k) @ (k x n), reading both inputs and writing the output once.

    FLOPs 2 m k n; bytes e (m k + k n + m n). For a LLaMA-7B projection (k = n = 4096) the intensity grows
    with the tokens m of the micro-batch, so a bigger batch moves a kernel from the memory roof to the
    compute roof.
    """
    raise NotImplementedError("Exercise 14.5: matmul_intensity")


def merge_rank_traces(events: list, origin_s: float, group=None) -> list:
    """Exercise 14.6: gather every rank's trace events into one timeline, on every rank.

    Each rank recorded `events` (Chrome events, ts in microseconds since its own start) and knows `origin_s`,
    the wall-clock time (time.time()) of its start. Ranks start at different moments, so their ts are on
    different clocks. Gather all ranks' (origin_s, events) with `torch.distributed.all_gather_object`, shift
    each rank's ts by (its origin - the earliest origin) x 1e6, set each event's "pid" to its rank in the
    group, and return all events sorted by (ts, pid) -- the same list on every rank. Do not modify the
    inputs. (The runtime does this when it writes `--trace`; a real profiler must also correct clock skew
    between machines, which NTP keeps to about a millisecond.)
    """
    raise NotImplementedError("Exercise 14.6: merge_rank_traces")
