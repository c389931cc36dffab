"""The compare suite page's fixed prose (compare_suite.write_doc): what the `cpu` profile measures, why the suite
calibrates, the suite's history before runs were kept (docs/benchmarks/suite_runs/ holds every run since
2026-12-06; compare_runs.md re-predicts them), and how to read each row's components.
"""

from __future__ import annotations

PROFILE_AND_HISTORY = """The `cpu` profile is measured once for the machine by `llama-course bench`, never per layout: the matmul
peak and copy bandwidth; PyTorch's fused causal attention timed alone at a grid of sequence lengths and head
dims (a fixed cost and a cost per score element computed); the real model's forward-backward timed inside
single-process train steps, from which the per-kernel overhead and matmul efficiency are fitted, the attention
taken as measured; how many cores' worth of compute 2 and 4
processes get when they compute at once (`effective_cores`); gloo's and the course's all-reduce against
size for 2 and 4 processes, *in situ* (issued right after compute, as training issues a bucket or a
tensor-parallel all-reduce) and *back to back* (the rest of an unbucketed sync), each point the mean over at
least half a second of bursts (since 2026-12-07: before, 9 bursts, 45 ms for a small back-to-back all-reduce,
whose mean mostly missed the scheduler waits a training step pays for); and a parameter-server round trip over
torch RPC with 1 and 2 workers (push a gradient list, get weights back once every worker pushed). Every
step also ends with the loss all-reduce and, for sharded gradients, the norm's (`step_scalars`: about a
millisecond each between processes here, microseconds on NVLink). How the simulator uses them is in
`simulator/hardware.py`.

Why calibrate: this is a shared 2-core VM whose speed drifts by more than the model's error. On
2026-11-29 the same single-process forward-backward of the tiny model (micro-batch 4) measured 23.4 ms
and 28.2 ms in two `bench` runs a quarter of an hour apart, and 17 ms right after the 03:34 run below,
whose `bench` had measured 24 ms ten minutes before. A profile is a snapshot; `--calibrate` says how fast
the machine is while each layout trains, and the table keeps the uncalibrated error beside it.

History (each line one run of this suite, `--repeat 3`, mean |error|, layouts within 20%, worst row):
- 2026-11-28, the first shipped profile (fastest collective after a barrier, compute fitted on
  forward-backward loops, ideal core sharing): 29% on a quiet machine, 2 of 11.
- 2026-11-29 01:43, in-situ collective curves and measured core sharing: 15%, 10 of 11, dp 4 naive +79%
  (its 4-process ring was measured in multiprocessing-spawned processes; bench now uses torchrun).
- 2026-11-29 02:44, a profile measured just before under torchrun: 20%, 6 of 11, every row too fast;
  a speed probe showed the machine had not drifted, the model was short: exposed communication.
- 2026-11-29 03:14 (`--bench 3 --calibrate`), + the step's scalar all-reduces, p2p and RPC curves: 11%
  (uncalibrated 12%), 10 of 11, dp 2 naive -23%: its 39 per-tensor all-reduces take 0.5 ms each but for
  a few scheduler ticks of 3-6 ms, which the median of bursts that bench then used left out.
- 2026-11-29 03:23, collective curves as the mean over bursts: 7% (uncalibrated 9%), 10 of 11, dp 4
  bucketed -22%: started together, the slowest of 4 processes on 2 cores runs ~20% behind their mean.
- 2026-11-29 03:34, + that straggle (measured by bench): 9% (uncalibrated 11%), 10 of 11, dp 2 naive -24%
  (its three repeats measured 70, 85 and 95 ms: the per-tensor sync is this suite's noisiest row).
- 2026-11-29 04:05, the same code with `--repeat 5` (this page): 8% (uncalibrated 11%), 11 of 11, the
  worst dp 4 naive +18% (its five repeats measured 161-226 ms, dp 2 naive's 62-88 ms).
"""
"""The page's closing paragraphs (a record of earlier runs: their figures are quoted from those runs' pages)."""


def load_note(rows: list) -> str:
    """How the error depends on the machine's load during the run, and how to read the components."""
    ok = [r for r in rows if r["ok"]]
    if not ok:
        return ""
    lowest = min(ok, key=lambda r: r["load"])
    worst = max(ok, key=lambda r: abs(r["relative_error"]["step_time_s"]))
    return (f"Load: from {lowest['load']:.1f} to {max(r['load'] for r in ok):.1f} (a training run itself loads "
            f"the machine with its processes); the worst row is {worst['name']} "
            f"({worst['relative_error']['step_time_s']:+.0%}). Reading the components: ZeRO-3 and tensor "
            "parallel issue their gathers and all-reduces inside forward and backward, so the runtime's compute "
            "spans include them (compare the step times, not those columns); a pipeline's blocking receive "
            "shows as measured communication where the simulator counts the wait as bubble (compare compute "
            "+ exposed comm + bubble); a straggler's injected sleep counts as compute on the slow rank only "
            "(the measured column averages the ranks); and a parameter-server worker runs no optimizer (the "
            "server's update is inside its push).")
