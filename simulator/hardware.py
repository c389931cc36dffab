"""Hardware: what one accelerator can do, as the cost model sees it.

A device is a roofline: dense matmul peak P (TFLOP/s, by precision), memory bandwidth W (bytes/s) and
memory M (bytes). An op of F FLOPs that moves Q bytes takes

    t = max(F / (P * e_mm * e_shape), Q / (W * e_mem)) + kernel_overhead

where e_mm is the fraction of peak that large, well-shaped matmuls reach, e_shape what a GEMM's shape
keeps of it on the GPU's `sm_count` SMs (wave and tile quantization, short reductions:
`compute.gemm_efficiency`; 1 on cpu) and e_mem the fraction of HBM bandwidth that element-wise kernels
reach. e_mm and e_mem are calibrated ONCE per GPU type (never per run):

- A100: e_mm fitted on Megatron-LM 2021 Table 1 (one number for all ten rows, docs/simulator/validation.md),
  with the shape model in place;
- H100 / H200: their own e_mm, fitted on the four H100 rows of LLM Foundry's MPT benchmarks (designated
  calibration rows, configs/validation/llm-foundry-mpt-h100.yaml): with the A100's, every H100 run was 14%
  to 43% too fast. Hopper's dense peak (989 TFLOP/s) is 3.2x the A100's, the published H100/A100 throughput
  of the same runs 2.1-2.5x; every other H100 run is out of sample;
- link efficiency: the share of NVLink bandwidth a ring reaches, from the nccl-tests busbw figures
  (230 GB/s of 300 on 8 x A100, 370 of 450 on 8 x H100); NIC efficiency: the share of InfiniBand line
  rate NCCL reaches (NIC_EFFICIENCY, 0.92), so no link runs at 100% of its datasheet rate.

Links: `intra_node` is NVLink/NVSwitch per GPU and per direction, `inter_node` one NIC per GPU (8 x 200 Gb/s
HDR = 25 GB/s per A100; 8 x 400 Gb/s NDR = 50 GB/s per H100). Every value can be overridden from the config
(`cluster.peak_tflops`, `cluster.memory_GB`, `cluster.intra_node.bandwidth_GBps`, ...).

`cpu` is this machine, read from `simulator/profiles/cpu.json` (written by `llama-course bench` on the
reference machine, a 2-core VM; `bench` writes your machine's profile to ~/.cache/llama-course, which is
read first). On a CPU three things differ from a GPU, each measured once by `bench`, never set per layout:

- per-kernel overhead dominates small models: every simulated kernel costs `kernel_overhead_us` (fitted on
  the real model's single-process steps, with the matmul efficiency: `bench.fit_compute`);
- collectives are gloo's, not a ring over links: all-reduce (and reduce-scatter / all-gather) take the
  measured time against message size for that many processes (`all_reduce_seconds`: gloo's own
  all_reduce for `implementation: torch`, the course's ring on send/recv for `course`), interpolated;
- processes share `cores`: k ranks computing at once get `effective_cores[k]` cores' worth of compute
  between them (measured by `bench`: on the 2-core reference VM, 4 processes get ~1.8 cores, not 2: context
  switches and caches), so each computes k / effective_cores[k] times slower than alone; without the
  measurement, k / cores when above 1;
- the scheduler is not fair at a step's time scale: started together, the slowest of k processes falls
  `straggle[k]` behind their mean (measured: ~2% for 2 processes, ~20% for 4 on 2 cores), and each
  synchronizing collective waits for it, so compute runs that much slower on the critical path (the step's
  breakdown reads it as the mean rank spends it: waiting in exposed communication, as `compare` measures);
- a parameter server's push and pull over torch RPC (`rpc_round_trip_seconds`, 1 and 2 workers) is a
  measured curve too, not the link; a pipeline's send is the link's alpha-beta (a measured curve of a send
  after compute was dropped: over four compare suite runs it never moved the held-out suite's error,
  docs/benchmarks/cpu_terms.md);
- fused attention is priced as `bench` timed PyTorch's CPU kernel (`attention`: a fixed cost plus a cost per
  score element computed, growing with the head dim), not at a share of the matmul peak: its softmax and
  small per-head products run far below it, so it grows with the sequence length faster than a roofline says;
- `speed_factor` scales all compute: `compare --calibrate` measures how fast the machine runs now against
  when it was profiled (a shared VM drifts by 20% in a quarter of an hour).

    python -c "from simulator.hardware import gpu_preset; print(gpu_preset('a100-80gb'))"
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass

from simulator.config import ConfigError
from simulator.cpu_profile import (  # noqa: F401  (CPU_PROFILE, PROFILE_DIR ... are read from here too)
    CPU_PROFILE,
    DEFAULT_CPU_PROFILE,
    PROFILE_DIR,
    attention_cost_of,
    between_counts,
    collective_curves_of,
    cpu_profile_path,
    rpc_curves_of,
    saturating,
    user_cpu_profile_path,
    value_or_none,
    write_cpu_profile,
)

# Fraction of dense peak a large, well-shaped fp16/bf16 GEMM reaches in training; a GEMM's own shape (waves
# and tiles over the SMs) scales it down from there (compute.gemm_efficiency). One per GPU generation, each
# fitted once on its calibration rows (benchmarks/simulator_validation.py prints both scans): A100 on
# Megatron-LM 2021 Table 1, H100 / H200 on LLM Foundry's MPT H100 rows.
MATMUL_EFFICIENCY = 0.705
H100_MATMUL_EFFICIENCY = 0.525
# Fraction of HBM bandwidth a fused element-wise kernel (norm, softmax, GeLU, dropout) reaches.
MEMORY_EFFICIENCY = 0.80


@dataclass
class Hardware:
    """One accelerator type and the links around it (all rates in bytes/s or FLOP/s, SI units)."""

    name: str
    peak_flops: dict
    """Dense peak FLOP/s by precision: {'fp32': ..., 'fp16': ..., 'bf16': ...}."""
    memory_bytes: float
    """Device memory in bytes."""
    memory_bandwidth: float
    """HBM bandwidth in bytes/s."""
    intra_bandwidth: float
    """NVLink bandwidth per GPU per direction, bytes/s."""
    intra_latency: float
    """One-way latency of a message within a node, seconds."""
    inter_bandwidth: float
    """NIC bandwidth per GPU per direction, bytes/s."""
    inter_latency: float
    """One-way latency of a message between nodes, seconds."""
    memory_reserve: float = 0.0
    """Bytes of device memory the run's tensors cannot use: CUDA context and workspaces, NCCL buffers,
    allocator fragmentation (`cluster.memory_reserve_GB`; GPU presets: RESERVE_FIXED + RESERVE_SHARE of it)."""
    gpus_per_node: int = 8
    """Devices per node."""
    topology: str = "fat_tree"
    """Inter-node fabric: fat_tree | rail_optimized."""
    matmul_efficiency: float = MATMUL_EFFICIENCY
    """Calibrated share of peak that large matmuls reach."""
    memory_efficiency: float = MEMORY_EFFICIENCY
    """Share of HBM bandwidth element-wise kernels reach."""
    link_efficiency: float = 1.0
    """Share of NVLink bandwidth a ring collective reaches (nccl-tests busbw / link bandwidth)."""
    nic_efficiency: float = 1.0
    """Share of a NIC's line rate NCCL's traffic reaches (GPU presets: NIC_EFFICIENCY)."""
    sm_count: int | None = None
    """Streaming multiprocessors (GPUs): a matmul runs in waves of one output tile per SM
    (compute.gemm_efficiency); None = no tile model (cpu)."""
    kernel_overhead: float = 0.0
    """Fixed cost per kernel launch, seconds (dominant on CPU, small on GPU)."""
    memory_shared: bool = False
    """True when the devices of a node share one memory (cpu: processes share RAM)."""
    nodes_per_leaf: int = 16
    """Nodes under one leaf switch of a fat tree; a rail switch of the same ports serves one NIC of
    nodes_per_leaf x gpus_per_node nodes (topology.py)."""
    oversubscription: float = 1.0
    """A leaf (or rail) switch's NIC ports over its spine uplinks (1 = non-blocking; 2 = 2:1)."""
    collective_table: dict | None = None
    """Measured all-reduce (cpu): {processes: [(bytes, seconds)]} of the run's implementation; None = links."""
    collective_curves: dict | None = None
    """Every measured curve (cpu): {"gloo" | "course": {processes: [(bytes, seconds)]}}."""
    back_to_back_table: dict | None = None
    """Measured all-reduce issued right after another (cpu), as collective_table; None = the same."""
    back_to_back_curves: dict | None = None
    """Every measured back-to-back curve (cpu), as collective_curves."""
    cores: int | None = None
    """Cores the processes share (cpu); None = one device per rank (GPUs)."""
    compute_slowdown: float = 1.0
    """Compute time factor from ranks sharing cores (`sharing_slowdown`); set by `hardware_for`."""
    effective_cores: dict | None = None
    """{processes computing at once: cores' worth of compute they get together}, measured (cpu)."""
    rpc_curves: dict | None = None
    """Measured RPC round trip after compute (cpu; a parameter server's push + pull, answered once every
    worker pushed): {workers: [(bytes each way per worker, seconds)]}; None = the link, as on GPUs."""
    straggle: dict | None = None
    """{processes: how far the slowest of them falls behind their mean when they start a computation
    together} (cpu, measured): the scheduler is not fair at a step's time scale, and every synchronizing
    collective waits for the slowest rank. 2 processes on 2 cores: ~2%; 4: ~20%."""
    speed_factor: float = 1.0
    """Compute time multiplier for this machine now against when it was profiled (cpu): a shared machine's
    speed drifts, and `compare --calibrate` measures it with a one-process probe before and after a run."""
    optimizer_per_tensor: float = 0.0
    """Fixed seconds per parameter tensor of an optimizer step (cpu: Python and dispatch per tensor)."""
    optimizer_per_param: float | None = None
    """Seconds per parameter of an optimizer step; None = memory-bound model from memory_bandwidth."""
    attention_cost: tuple | None = None
    """Measured fused causal attention (cpu): ((fixed s, s per score, s per score and head dim) of the forward,
    the same of the backward), for t = fixed + scores x (a + b x head_dim); None = the roofline at
    FLASH_EFFICIENCY (GPUs: `compute.op_time`)."""

    def peak(self, precision: str) -> float:
        return self.peak_flops[precision]

    def measured_collective(self, kind: str, n: int, nbytes: float, back_to_back: bool = False) -> float | None:
        """Seconds of a collective from the measured all-reduce curves (cpu), or None to simulate the links.

        Two curves per implementation: in situ (a collective issued right after compute, the default: the
        ranks arrive skewed and must be scheduled again) and back to back (one issued right after another:
        the rest of an unbucketed gradient sync), when the profile has them.

        The curve of n processes, [(bytes, seconds)], is interpolated linearly in bytes (locally the
        alpha-beta form; beyond the largest size its last slope continues). Reduce-scatter, all-gather and
        all-to-all move half an all-reduce's bytes in half its steps: the fixed cost of a collective (the
        curve at 0 bytes) once, plus half the rest. Between measured
        process counts the curves are interpolated; outside them, scaled by (n - 1)."""
        if not self.collective_table or kind == "send" or n <= 1:
            return None
        table = (self.back_to_back_table if back_to_back and self.back_to_back_table else self.collective_table)
        t = between_counts(table, n, nbytes, lambda n, ref: (n - 1) / max(1, ref - 1))
        if kind == "all_reduce":
            return t
        # reduce-scatter, all-gather, all-to-all: half the steps and bytes of an all-reduce, but the fixed
        # cost of a collective (ranks meeting, being scheduled again) is paid once, not halved
        fixed = min(t, self.measured_collective("all_reduce", n, 0.0, back_to_back))
        return fixed + (t - fixed) / 2

    def rpc_round_trip(self, workers: int, nbytes: float) -> float | None:
        """Seconds of a BSP push + pull of `nbytes` each way per worker from the measured RPC curves (cpu),
        or None. Between measured worker counts interpolated; beyond the largest, the server's share of
        the time grows with the workers it answers (scaled by workers / measured)."""
        if not self.rpc_curves:
            return None
        return between_counts(self.rpc_curves, workers, nbytes, lambda n, ref: max(1.0, n / ref))

    def straggle_factor(self, k: float) -> float:
        """1 + how far the slowest of k processes computing together falls behind their mean (cpu; 1 on GPUs)."""
        if not self.cores or not self.straggle or k <= 1:
            return 1.0
        return 1.0 + max(0.0, saturating({1: 0.0, **self.straggle}, k))

    def sharing_slowdown(self, k: float) -> float:
        """How many times slower each of k processes computing at once runs than one alone (cpu; 1 on GPUs)."""
        if not self.cores or k <= 1:
            return 1.0
        if self.effective_cores:
            return max(1.0, k / saturating(self.effective_cores, k))
        return max(1.0, k / self.cores)

    def with_overrides(self, **changes) -> Hardware:
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


T = 1e12
G = 1e9
GIB = 1 << 30   # "80 GB" of HBM is 80 GiB (nvidia-smi shows 81,920 MiB on an A100 80GB)
US = 1e-6


# Memory a training process cannot use for its tensors (an assumption, not a fit): the CUDA context with
# cuBLAS/cuDNN workspaces (~0.5-1 GB), NCCL's buffers for the run's communicators (~0.5-1 GB), and the
# caching allocator's fragmentation (reserved minus allocated, typically a few % of what the step uses).
RESERVE_FIXED = 2 * G
RESERVE_SHARE = 0.05
# Share of an InfiniBand NIC's line rate that NCCL's collectives reach (an assumption from the published
# orders of magnitude, not a fit): RDMA headers and the 4 KB MTU cost ~3% of the data rate, NCCL's proxy
# and chunking a few % more, so multi-node busbw of 8 x HDR (8 x 25 GB/s) lands near 185 GB/s, not 200. With
# NVLink derated too (link_efficiency), a 2-node ring is never faster than a 1-node one.
NIC_EFFICIENCY = 0.92


def _gpu(name, bf16, fp32, mem_gb, hbm_tbps, nvlink_gbps, nic_gbps, link_eff, sms, e_mm=MATMUL_EFFICIENCY):
    fp8 = {"fp8": 2 * bf16 * T} if name.startswith("h") else {}       # Hopper's FP8 tensor cores: 2x dense bf16
    return Hardware(name=name, peak_flops={"fp32": fp32 * T, "fp16": bf16 * T, "bf16": bf16 * T, **fp8},
                    memory_bytes=mem_gb * GIB, memory_reserve=RESERVE_FIXED + RESERVE_SHARE * mem_gb * GIB,
                    memory_bandwidth=hbm_tbps * 1e12,
                    intra_bandwidth=nvlink_gbps * G, intra_latency=2 * US,
                    inter_bandwidth=nic_gbps * G, inter_latency=5 * US, link_efficiency=link_eff,
                    nic_efficiency=NIC_EFFICIENCY, sm_count=sms, matmul_efficiency=e_mm,
                    kernel_overhead=4 * US)


GPU_PRESETS = {
    # dense peaks, memory and SMs from vendor datasheets (memory in GiB, as the devices report it) (../shared/reference/published-results.md);
    # NVLink per direction = half the datasheet's both-directions figure; link_eff = nccl-tests busbw / NVLink.
    "a100-40gb": lambda: _gpu("a100-40gb", 312, 19.5, 40, 1.555, 300, 25, 230 / 300, 108),
    "a100-80gb": lambda: _gpu("a100-80gb", 312, 19.5, 80, 2.039, 300, 25, 230 / 300, 108),
    "h100-sxm": lambda: _gpu("h100-sxm", 989, 67, 80, 3.35, 450, 50, 370 / 450, 132, H100_MATMUL_EFFICIENCY),
    "h200": lambda: _gpu("h200", 989, 67, 141, 4.8, 450, 50, 370 / 450, 132, H100_MATMUL_EFFICIENCY),
}

def gpu_preset(name: str, profile_path: str | None = None) -> Hardware:
    """The Hardware of a named preset (`cpu` reads the profile `bench` measured, else the shipped one).

    A GPU preset is the datasheet numbers above, then a measured calibration if there is one: a shipped
    `simulator/profiles/<name>.json`, then the file named by $LLAMA_COURSE_GPU_PROFILE (or `profile_path`)
    when its "name" is this preset (what `scripts/gpu_check.sh` writes on that GPU)."""
    if name == "cpu":
        return cpu_from_profile(profile_path or cpu_profile_path())
    if name not in GPU_PRESETS:
        raise ConfigError(f"cluster.gpu: unknown GPU '{name}' (known: {', '.join(list(GPU_PRESETS) + ['cpu'])})")
    hw = GPU_PRESETS[name]()
    for path in (os.path.join(PROFILE_DIR, f"{name}.json"), profile_path or os.environ.get("LLAMA_COURSE_GPU_PROFILE")):
        if path and os.path.exists(path):
            hw = apply_gpu_profile(hw, path)
    return hw


GPU_PROFILE_KEYS = ("matmul_efficiency", "memory_efficiency", "memory_bandwidth_GBps", "peak_tflops",
                    "kernel_overhead_us", "link_efficiency", "nic_efficiency")


def apply_gpu_profile(hw: Hardware, path: str) -> Hardware:
    """The preset with a measured GPU profile's values (only a profile whose "name" is this preset)."""
    try:
        with open(path) as f:
            prof = json.load(f)
    except (OSError, ValueError):
        raise ConfigError(f"GPU profile {path}: not valid JSON") from None
    if not isinstance(prof, dict) or prof.get("name") != hw.name:
        return hw
    try:
        peaks = dict(hw.peak_flops)
        peaks.update({k: float(v) * T for k, v in (prof.get("peak_tflops") or {}).items()})
        return hw.with_overrides(
            peak_flops=peaks,
            matmul_efficiency=value_or_none(prof.get("matmul_efficiency")),
            memory_efficiency=value_or_none(prof.get("memory_efficiency")),
            memory_bandwidth=value_or_none(prof.get("memory_bandwidth_GBps"), G),
            kernel_overhead=value_or_none(prof.get("kernel_overhead_us"), US),
            link_efficiency=value_or_none(prof.get("link_efficiency")),
            nic_efficiency=value_or_none(prof.get("nic_efficiency")))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"GPU profile {path}: bad field ({e})") from None


def cpu_from_profile(path: str) -> Hardware:
    """Hardware of this machine from a bench profile; missing keys fall back to the shipped default."""
    prof = dict(DEFAULT_CPU_PROFILE)
    if os.path.exists(path):
        try:
            with open(path) as f:
                loaded = json.load(f)
        except (OSError, ValueError):
            raise ConfigError(f"cpu profile {path}: not valid JSON (rerun `llama-course bench`)") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"cpu profile {path}: expected a JSON object")
        prof.update(loaded)
    try:
        peaks = {k: float(v) * T for k, v in prof["peak_tflops"].items()}
        for p in ("fp32", "fp16", "bf16", "fp8"):          # fp8: emulated, fp32 products of quantized operands
            peaks.setdefault(p, peaks.get("fp32", 0.05 * T))
        return Hardware(
            name="cpu", peak_flops=peaks, memory_bytes=float(prof["memory_GB"]) * G,
            memory_bandwidth=float(prof["memory_bandwidth_GBps"]) * G,
            intra_bandwidth=float(prof["intra_node"]["bandwidth_GBps"]) * G,
            intra_latency=float(prof["intra_node"]["latency_us"]) * US,
            inter_bandwidth=float(prof["inter_node"]["bandwidth_GBps"]) * G,
            inter_latency=float(prof["inter_node"]["latency_us"]) * US,
            gpus_per_node=int(prof.get("gpus_per_node", 1 << 30)),
            matmul_efficiency=float(prof["matmul_efficiency"]),
            memory_efficiency=float(prof["memory_efficiency"]),
            link_efficiency=float(prof.get("link_efficiency", 1.0)),
            kernel_overhead=float(prof.get("kernel_overhead_us", 0.0)) * US,
            memory_shared=bool(prof.get("memory_shared", True)),
            collective_curves=collective_curves_of(prof) or None,
            back_to_back_curves=collective_curves_of(prof, "all_reduce_back_to_back_seconds") or None,
            collective_table=(lambda c: c.get("gloo") or next(iter(c.values()), None))(collective_curves_of(prof)),
            cores=int(prof["cores"]) if prof.get("cores") else None,
            effective_cores=prof.get("effective_cores") or None,
            rpc_curves=rpc_curves_of(prof.get("rpc_round_trip_seconds")),
            speed_factor=float(prof.get("speed_factor", 1.0)),
            straggle=prof.get("straggle") or None,
            optimizer_per_tensor=float(prof.get("optimizer_us_per_tensor", 0.0)) * US,
            optimizer_per_param=(float(prof["optimizer_ns_per_param"]) * 1e-9
                                 if prof.get("optimizer_ns_per_param") is not None else None),
            attention_cost=attention_cost_of(prof.get("attention")))
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"cpu profile {path}: bad or missing field {e}") from None


def hardware_for(cfg) -> Hardware:
    """The Hardware of a config: the preset, then every `cluster.*` override the config sets."""
    c = cfg.cluster
    hw = gpu_preset(c.gpu)
    prec = cfg.training.precision
    peaks = dict(hw.peak_flops)
    if c.peak_tflops is not None:
        peaks[prec] = c.peak_tflops * T
    gpn = c.gpus_per_node or (c.num_gpus if c.gpu == "cpu" else hw.gpus_per_node)
    hw = hw.with_overrides(
        peak_flops=peaks,
        memory_bytes=c.memory_GB * G if c.memory_GB is not None else None,
        memory_reserve=(c.memory_reserve_GB * G if c.memory_reserve_GB is not None else
                        RESERVE_FIXED + RESERVE_SHARE * c.memory_GB * G if c.memory_GB is not None and hw.memory_reserve
                        else None),
        memory_bandwidth=c.memory_bandwidth_GBps * G if c.memory_bandwidth_GBps is not None else None,
        matmul_efficiency=c.compute_efficiency,
        intra_bandwidth=c.intra_node.bandwidth_GBps * G if c.intra_node.bandwidth_GBps is not None else None,
        intra_latency=c.intra_node.latency_us * US if c.intra_node.latency_us is not None else None,
        inter_bandwidth=c.inter_node.bandwidth_GBps * G if c.inter_node.bandwidth_GBps is not None else None,
        inter_latency=c.inter_node.latency_us * US if c.inter_node.latency_us is not None else None,
        topology=c.inter_node.topology,
        oversubscription=c.inter_node.oversubscription,
        gpus_per_node=min(gpn, c.num_gpus) if c.gpu == "cpu" else gpn,
    )
    if hw.cores:
        # k processes share the cores (each runs k / effective_cores slower), every synchronizing collective
        # waits for the slowest of them, and the machine may run slower or faster than when profiled
        hw = hw.with_overrides(compute_slowdown=hw.sharing_slowdown(c.num_gpus) * hw.straggle_factor(c.num_gpus)
                               * hw.speed_factor)
    if hw.collective_curves:
        # which code moves the bytes: the course's data-parallel engines (gradients, ZeRO gathers) use their own
        # ring on send/recv; tensor parallelism and every torch engine use gloo's all_reduce
        p = cfg.parallel
        impl = "course" if p.implementation == "course" and cfg.replicas > 1 else "gloo"
        hw = hw.with_overrides(collective_table=hw.collective_curves.get(impl) or hw.collective_table,
                               back_to_back_table=(hw.back_to_back_curves or {}).get(impl))
    return hw


def device_memory(hw: Hardware) -> float:
    """Memory one device's tensors may use: its own (or its share of a node's shared memory, cpu processes)
    less the reserve for the CUDA context, NCCL buffers and fragmentation."""
    own = hw.memory_bytes / max(1, hw.gpus_per_node) if hw.memory_shared else hw.memory_bytes
    return max(0.0, own - hw.memory_reserve)


def describe(hw: Hardware, precision: str = "bf16") -> str:
    return (f"{hw.name}: {hw.peak(precision) / T:g} TFLOP/s {precision}, {hw.memory_bytes / G:g} GB at "
            f"{hw.memory_bandwidth / G:g} GB/s, NVLink {hw.intra_bandwidth / G:g} GB/s, "
            f"NIC {hw.inter_bandwidth / G:g} GB/s per GPU")

