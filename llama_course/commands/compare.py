"""`llama-course compare CONFIG [--json] [--trace-dir DIR]`: predict a run, then run it, and report the error.

    llama-course compare configs/tiny.yaml
    llama-course compare configs/tiny.yaml --set parallel.pp=2 --set parallel.dp=1 --trace-dir runs/pp2

The simulator predicts one step of the config (on this machine's `cpu` profile when no GPU is here); the
runtime trains it with `--trace`, and the measured step is the median step time of the run's second half.
Components are compared where the runtime can time them: compute (forward + backward spans), exposed
communication (comm spans that no compute overlapped, per rank, averaged), bubble (idle spans of
pipeline schedules) and optimizer. relative_error = (predicted - measured) / measured.
Both Chrome traces are written side by side (predicted.json, measured.json): open them in Perfetto.

Timing-free, `comm_bytes` compares what the two engines mean by the config: per rank and optimizer step,
the bytes of each kind of communication (all_reduce, reduce_scatter, all_gather, broadcast, send, recv,
all_to_all, rpc), predicted by simulator/comm_bytes.py and counted by the runtime's wire recorder
(llama_course/core/wire.py) at the torch.distributed calls. `comm_bytes_equal` is true when they agree byte
for byte on every rank and step (docs/design.md, "comm_bytes").
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import tempfile

from llama_course.commands.compare_trace import COMPONENTS, measured_components, measured_wait, untraced_note
from simulator.comm_bytes import comm_bytes as predict_comm_bytes
from simulator.comm_bytes import unpredicted
from simulator.config_checks import check_writable


def compare(config, overrides=(), trace_dir: str | None = None, steps: int | None = None, quiet: bool = True,
            calibrate: bool = False, log=None) -> dict:
    """Simulate and train the same config; {"predicted", "measured", "relative_error", "config", ...}.

    `calibrate` (cpu): time the machine's speed probe (`bench.speed_factor`, on as many processes as the
    config runs, computing at once) right before and right after
    training and predict with the profile's compute scaled by their mean ("speed"), because a shared
    machine's speed drifts by more than the model's error between a `bench` and a run. The prediction on
    the profile as it is stays in "uncalibrated" (predicted, relative_error).

    `log` (print-like) is told each stage as it starts and the training's progress (every tenth of the steps)."""
    import torch

    from llama_course.trainer import train
    from simulator.config import load_config
    from simulator.simulate import simulate

    overrides = list(overrides)
    if steps:
        overrides.append(f"training.steps={steps}")
    cfg = load_config(config, overrides)
    notes = []
    if cfg.cluster.gpu != "cpu" and not torch.cuda.is_available():
        overrides.append("cluster.gpu=cpu")
        notes.append(f"no GPU here: predicted on the measured cpu profile instead of {cfg.cluster.gpu}")
        cfg = load_config(config, overrides)
    calibrate = calibrate and cfg.cluster.gpu == "cpu"
    if trace_dir:
        check_writable("--trace-dir", os.path.join(trace_dir, "predicted.json"))
    trace_dir = trace_dir or tempfile.mkdtemp(prefix="llama-course-compare-")
    os.makedirs(trace_dir, exist_ok=True)
    predicted_trace = os.path.join(trace_dir, "predicted.json")
    measured_trace = os.path.join(trace_dir, "measured.json")
    say = log or (lambda msg: None)
    probes = []
    if calibrate:
        from llama_course.commands.bench import speed_factor

        k = cfg.world_size
        say(f"compare: timing this machine's speed (the tiny model's forward + backward, {k} process"
            f"{'es at once' if k > 1 else ''})")
        probes.append(speed_factor(processes=k))

    # the components are read from the same steps as the step time: the second half of the run
    traced = max(1, cfg.training.steps - cfg.training.steps // 2)
    threads = torch.get_num_threads()
    if cfg.cluster.gpu == "cpu" and cfg.world_size == 1:
        torch.set_num_threads(1)        # as the cpu profile was measured, and as every launched rank runs
    metrics = os.path.join(trace_dir, "metrics.jsonl")
    say(f"compare: training {cfg.training.steps} steps on {cfg.world_size} process"
        f"{'es' if cfg.world_size > 1 else ''} (the step time is the median of the second half)")
    try:
        with _watch(metrics, cfg.training.steps, say):
            records = train(config, overrides, metrics=metrics, quiet=quiet, trace=measured_trace,
                            trace_steps=traced)
    finally:
        torch.set_num_threads(threads)
    tail = records[len(records) // 2:] or records
    measured = {"step_time_s": statistics.median(r["step_time_s"] for r in tail),
                "tokens_per_s": statistics.median(r["tokens_per_s"] for r in tail)}
    measured["breakdown_s"] = measured_components(measured_trace, traced)
    measured["straggle_wait_s"] = measured_wait(measured_trace, traced)
    notes += [n for n in [untraced_note(measured)] if n]

    speed = None
    if calibrate:
        probes.append(speed_factor(processes=cfg.world_size))
        speed = {"speed_factor": statistics.mean(x["speed_factor"] for x in probes),
                 "probes": probes}
        notes += [f"speed probe: {x['fallback']}; the one-process probe stood in" for x in probes[:1] if "fallback" in x]
        notes.append(f"calibrated: this machine computed at {1 / speed['speed_factor']:.2f}x its profile's "
                     f"speed (probe before / after training: "
                     + " / ".join(f"{x['measured_s'] * 1e3:.1f} ms" for x in probes)
                     + f", profile {probes[0]['predicted_s'] * 1e3:.1f} ms)")
    say("compare: simulating the same config")
    raw = simulate(cfg, trace_path=None if speed else predicted_trace)
    pred = raw
    if speed:
        with scaled_profile(speed["speed_factor"]):
            pred = simulate(cfg, trace_path=predicted_trace)

    def summary(res):       # components averaged over ranks, as the measured trace is read
        parts = res.get("mean_breakdown_s") or res["breakdown_s"]
        return {"step_time_s": res["step_time_s"], "tokens_per_s": res["tokens_per_s"],
                "breakdown_s": {c: parts.get(c, 0.0) for c in COMPONENTS}, "straggle_wait_s": predicted_wait(res)}

    def errors(predicted):
        rel = {k: (predicted[k] - measured[k]) / measured[k] for k in ("step_time_s", "tokens_per_s")}
        rel["breakdown_s"] = {c: (predicted["breakdown_s"][c] - m) / m if m > 1e-4 else None
                              for c, m in measured["breakdown_s"].items()}
        w, mw = predicted["straggle_wait_s"], measured["straggle_wait_s"]
        rel["straggle_wait_s"] = (w - mw) / mw if w is not None and mw is not None and mw > 1e-4 else None
        return rel

    predicted = summary(pred)
    predicted["comm_bytes"], measured["comm_bytes"], equal, note = comm_bytes_report(cfg, measured_trace)
    notes += [note] if note else []
    out = {"predicted": predicted, "measured": measured, "relative_error": errors(predicted),
           "comm_bytes_equal": equal, "traces": {"predicted": predicted_trace, "measured": measured_trace},
           "notes": notes, "config": pred.get("config", {})}
    if speed:
        out["speed"] = speed
        out["uncalibrated"] = {"predicted": summary(raw), "relative_error": errors(summary(raw))}
    return out


def predicted_wait(result: dict) -> float | None:
    """Of a simulate() result's exposed communication, the mean rank's wait for a slower one (cpu: the straggle
    of processes sharing cores, and with faults.slow the wait for the slowed rank); None where not priced."""
    if result.get("straggle_wait_s") is None:
        return None
    return result["straggle_wait_s"] + (result.get("load_balancing") or {}).get("rank_wait_s", 0.0)


def comm_bytes_report(cfg, measured_trace: str) -> tuple:
    """(predicted, measured, equal, note): `[rank][step] -> {kind: bytes}` from the simulator and from the
    measured trace's metadata (written by the trainer from the wire recorder); equal is None when either
    side is missing, and the note says why."""
    with open(measured_trace) as f:
        measured = json.load(f).get("metadata", {}).get("comm_bytes")
    why = unpredicted(cfg)
    predicted = None if why else predict_comm_bytes(cfg, steps=cfg.training.steps)
    if predicted is None or measured is None:
        return predicted, measured, None, f"comm_bytes not compared: {why or 'the run recorded none'}"
    if predicted == measured:
        return predicted, measured, True, None
    return predicted, measured, False, f"comm_bytes differ: {first_difference(predicted, measured)}"


def first_difference(predicted: list, measured: list) -> str:
    """The first rank, step and kind where two `[rank][step] -> {kind: bytes}` lists disagree."""
    if len(predicted) != len(measured):
        return f"{len(predicted)} ranks predicted, {len(measured)} measured"
    for rank, (p_steps, m_steps) in enumerate(zip(predicted, measured)):
        if len(p_steps) != len(m_steps):
            return f"rank {rank}: {len(p_steps)} steps predicted, {len(m_steps)} measured"
        for step, (p, m) in enumerate(zip(p_steps, m_steps), 1):
            for kind in p:
                if p[kind] != m.get(kind, 0):
                    return f"rank {rank} step {step} {kind}: predicted {p[kind]:,} B, measured {m.get(kind, 0):,} B"
    return "none"


@contextlib.contextmanager
def _watch(metrics: str, total: int, say):
    """Context: a thread that reads the metrics file as training writes it and says `step k/total` each
    tenth of the run (training itself runs quiet: its log lines would mix with compare's output)."""
    import threading

    stop = threading.Event()

    def run():
        shown = 0
        while not stop.wait(0.5):
            try:
                with open(metrics) as f:
                    done = sum(1 for line in f if line.strip())
            except OSError:
                continue
            if done * 10 // max(total, 1) > shown * 10 // max(total, 1):
                shown = done
                say(f"compare: step {done}/{total}")

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextlib.contextmanager
def _env(name: str, value: str):
    """Context: environment variable `name` set to `value`, restored after."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


@contextlib.contextmanager
def scaled_profile(factor: float):
    """Context: the `cpu` profile in use, its compute `factor` times slower (a temporary copy, through
    $LLAMA_COURSE_CPU_PROFILE); yields the copy's path."""
    from simulator.hardware import cpu_profile_path

    with open(cpu_profile_path()) as f:
        prof = json.load(f)
    prof["speed_factor"] = float(prof.get("speed_factor", 1.0)) * factor
    fd, path = tempfile.mkstemp(prefix="llama-course-profile-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(prof, f)
    try:
        with _env("LLAMA_COURSE_CPU_PROFILE", path):
            yield path
    finally:
        os.unlink(path)


def format_report(result: dict) -> str:
    p, m, r = result["predicted"], result["measured"], result["relative_error"]
    lines = [*(f"note: {n}" for n in result["notes"]),
             "| quantity | predicted | measured | error |", "|---|---:|---:|---:|",
             f"| step time (ms) | {p['step_time_s'] * 1e3:.2f} | {m['step_time_s'] * 1e3:.2f} | {r['step_time_s']:+.1%} |",
             f"| tokens/s | {p['tokens_per_s']:,.0f} | {m['tokens_per_s']:,.0f} | {r['tokens_per_s']:+.1%} |"]
    for c in COMPONENTS:
        if c in m["breakdown_s"]:
            err = r["breakdown_s"].get(c)
            lines.append(f"| {c} (ms) | {p['breakdown_s'][c] * 1e3:.2f} | {m['breakdown_s'][c] * 1e3:.2f} | "
                         f"{'-' if err is None else f'{err:+.1%}'} |")
    if p.get("straggle_wait_s") is not None and m.get("straggle_wait_s") is not None:
        err = r.get("straggle_wait_s")
        lines.append(f"| of exposed_comm, waiting for a slower rank (ms) | {p['straggle_wait_s'] * 1e3:.2f} | "
                     f"{m['straggle_wait_s'] * 1e3:.2f} | {'-' if err is None else f'{err:+.1%}'} |")
    if result.get("comm_bytes_equal") is not None:
        ranks = len(result["measured"]["comm_bytes"])
        lines.append(f"comm bytes per rank and step: {'equal' if result['comm_bytes_equal'] else 'DIFFERENT'} "
                     f"(predicted vs measured at the torch.distributed calls, {ranks} ranks)")
    if "uncalibrated" in result:
        u = result["uncalibrated"]
        lines.append(f"uncalibrated (the profile as it is): step time {u['predicted']['step_time_s'] * 1e3:.2f} ms "
                     f"predicted, {u['relative_error']['step_time_s']:+.1%}")
    lines.append(f"traces: {result['traces']['predicted']}  {result['traces']['measured']}  (open in ui.perfetto.dev)")
    return "\n".join(lines)


def cli(args) -> int:
    import sys

    result = compare(args.config, args.overrides, args.trace_dir, quiet=True,
                     calibrate=getattr(args, "calibrate", False),
                     log=lambda msg: print(msg, file=sys.stderr, flush=True))
    print(json.dumps(result) if args.json else format_report(result))
    return 0
