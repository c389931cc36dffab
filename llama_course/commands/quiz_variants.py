"""The interview quiz's numeric variants: each draws fresh numbers and returns the exact answer with its
explanation in English and Chinese (the formulas are listed in llama_course/commands/quiz.py's docstring).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

# Variants: each draws its numbers from `rng`, and returns them with the exact answer and explanations.


@dataclass
class Variant:
    """One drawn question: its numbers, the exact answer, and the question and explanation in both languages."""

    name: str
    params: dict
    answer: float
    unit: str
    question: dict = field(default_factory=dict)       # {"en": ..., "zh": ...}
    explanation: dict = field(default_factory=dict)    # {"en": ..., "zh": ...}


def _fmt(x: float) -> str:
    """A number as a reader would write it: 4 significant digits, no trailing zeros."""
    if x == int(x) and abs(x) < 1e15:
        return f"{int(x):,}"
    return f"{x:.4g}"


def _pipeline_bubble(rng: random.Random) -> Variant:
    p = rng.choice([2, 4, 8, 16])
    v = rng.choice([1, 1, 2, 4, "zb"])
    m = p * rng.choice([1, 2, 4, 8])          # interleaving needs m a multiple of p (Megatron-LM)
    schedule = "zero_bubble" if v == "zb" else "interleaved_1f1b" if v > 1 else "1f1b"
    v = 1 if v == "zb" else v
    answer = (p - 1) / ((3 if schedule == "zero_bubble" else 1) * v * m + p - 1)
    if schedule == "zero_bubble":
        sched_en = ("zero bubble (ZB-H1: each backward split into the input gradient B and the weight gradient W; "
                    "forward, B and W take one unit of time each)")
        sched_zh = "零气泡调度（ZB-H1：反向拆成输入梯度 B 和权重梯度 W；前向、B、W 各用一个时间单位）"
        formula = f"(p-1)(t_F+t_B-t_W) / (m(t_F+t_B+t_W) + (p-1)(t_F+t_B-t_W)) = {p - 1}/(3*{m}+{p - 1})"
    elif v == 1:
        sched_en, sched_zh = "1F1B", "1F1B"
        formula = f"(p-1)/(m+p-1) = {p - 1}/({m}+{p - 1})"
    else:
        sched_en = f"interleaved 1F1B with v={v} model chunks (virtual stages) per rank"
        sched_zh = f"交错式 1F1B（每个 rank 有 v={v} 个模型块/虚拟 stage）"
        formula = f"(p-1)/(v*m+p-1) = {p - 1}/({v}*{m}+{p - 1})"
    q_en = (f"A pipeline of p={p} stages runs m={m} micro-batches per optimizer step with {sched_en}. "
            f"Each stage takes the same time for every micro-batch. What fraction of the step's time is a "
            f"stage idle (the bubble)? Answer as a number between 0 and 1.")
    q_zh = (f"流水线并行有 p={p} 个 stage，每个优化器 step 处理 m={m} 个 micro-batch，调度为 {sched_zh}。"
            f"每个 stage 处理每个 micro-batch 的时间相同。一个 step 中 stage 空闲（气泡）的时间占比是多少？"
            f"请给出 0 到 1 之间的数。")
    e_en = (f"bubble fraction = {formula} = {answer:.4f}. The p-1 fill and drain slots are the same for GPipe "
            f"and 1F1B (1F1B only lowers the activations held from m to p micro-batches); interleaving "
            f"shrinks each slot by v at the cost of v times more point-to-point messages; zero bubble runs the "
            f"weight gradients, which no other stage waits for, in the drain.")
    e_zh = (f"气泡占比 = {formula} = {answer:.4f}。GPipe 与 1F1B 的填充/排空都是 p-1 个时隙（1F1B 只把同时保存的"
            f"激活从 m 份降到 p 份）；交错调度把每个时隙缩小 v 倍，代价是点对点通信次数变为 v 倍；零气泡调度把"
            f"其他 stage 不等待的权重梯度放到排空阶段计算。")
    return Variant("pipeline_bubble", dict(p=p, m=m, v=v, schedule=schedule), answer, "",
                   {"en": q_en, "zh": q_zh}, {"en": e_en, "zh": e_zh})


def _ring_all_reduce_bytes(rng: random.Random) -> Variant:
    params_b = rng.choice([1.3, 7, 8, 13, 70])
    dtype, nbytes = rng.choice([("bf16", 2), ("fp32", 4)])
    n = rng.choice([2, 4, 8, 16, 64, 256])
    size = params_b * 1e9 * nbytes
    answer = 2 * (n - 1) / n * size / 1e9
    q_en = (f"Data parallel training of a {_fmt(params_b)}B-parameter model on n={n} ranks all-reduces the "
            f"{dtype} gradients with a ring all-reduce. How many GB (10^9 bytes) does each rank send per step?")
    q_zh = (f"在 n={n} 个 rank 上数据并行训练一个 {_fmt(params_b)}B 参数的模型，用环形 all-reduce 同步 {dtype} "
            f"梯度。每个 rank 每个 step 发送多少 GB（10^9 字节）？")
    e_en = (f"S = {_fmt(params_b)}e9 x {nbytes} B = {size / 1e9:.4g} GB. Ring all-reduce = reduce-scatter "
            f"(n-1 steps of S/n) + all-gather (n-1 steps of S/n): 2(n-1)/n x S = 2x{n - 1}/{n} x "
            f"{size / 1e9:.4g} = {answer:.4g} GB. It barely grows with n: bandwidth-optimal.")
    e_zh = (f"S = {_fmt(params_b)}e9 x {nbytes} 字节 = {size / 1e9:.4g} GB。环形 all-reduce = reduce-scatter"
            f"（n-1 步，每步 S/n）+ all-gather（n-1 步，每步 S/n）：2(n-1)/n x S = {answer:.4g} GB。"
            f"几乎不随 n 增长，是带宽最优的。")
    return Variant("ring_all_reduce_bytes", dict(params=params_b * 1e9, bytes_per_value=nbytes, n=n),
                   answer, "GB", {"en": q_en, "zh": q_zh}, {"en": e_en, "zh": e_zh})


def _alpha_beta_all_reduce(rng: random.Random) -> Variant:
    n = rng.choice([4, 8, 16, 32, 64])
    size_mb = rng.choice([1, 4, 25, 100, 400])
    alpha_us = rng.choice([2, 5, 10, 20])
    bw = rng.choice([12.5, 25, 50, 100])
    t = 2 * (n - 1) * alpha_us * 1e-6 + 2 * (n - 1) / n * size_mb * 1e6 / (bw * 1e9)
    answer = t * 1e3
    q_en = (f"A ring all-reduce of S={size_mb} MB (1 MB = 10^6 bytes) runs on n={n} ranks; every link has latency "
            f"alpha={alpha_us} us and bandwidth B={_fmt(bw)} GB/s per direction. By the alpha-beta model, how "
            f"long does it take, in milliseconds?")
    q_zh = (f"在 n={n} 个 rank 上对 S={size_mb} MB（1 MB = 10^6 字节）做环形 all-reduce；每条链路延迟 alpha={alpha_us} 微秒，"
            f"单向带宽 B={_fmt(bw)} GB/s。按 alpha-beta 模型，耗时多少毫秒？")
    lat, band = 2 * (n - 1) * alpha_us * 1e-3, 2 * (n - 1) / n * size_mb * 1e6 / (bw * 1e9) * 1e3
    e_en = (f"T = 2(n-1) x alpha + 2(n-1)/n x S/B = {lat:.4g} ms (latency) + {band:.4g} ms (bandwidth) = "
            f"{answer:.4g} ms. Small messages are latency-bound (use a tree or bucket them); large ones "
            f"bandwidth-bound.")
    e_zh = (f"T = 2(n-1) x alpha + 2(n-1)/n x S/B = {lat:.4g} ms（延迟项）+ {band:.4g} ms（带宽项）= "
            f"{answer:.4g} ms。小消息受延迟限制（用树形算法或合并成 bucket），大消息受带宽限制。")
    return Variant("alpha_beta_all_reduce", dict(n=n, size_bytes=size_mb * 1e6, alpha_s=alpha_us * 1e-6,
                                                 bandwidth_Bps=bw * 1e9),
                   answer, "ms", {"en": q_en, "zh": q_zh}, {"en": e_en, "zh": e_zh})


ZERO_BYTES = {0: "16P", 1: "4P + 12P/N", 2: "2P + 14P/N", 3: "16P/N"}


def _zero_memory(rng: random.Random) -> Variant:
    params_b = rng.choice([1.3, 7, 13, 33, 65, 70])
    n = rng.choice([8, 16, 64, 256, 1024])
    stage = rng.choice([0, 1, 2, 3])
    p = params_b * 1e9
    per_gpu = {0: 16 * p, 1: 4 * p + 12 * p / n, 2: 2 * p + 14 * p / n, 3: 16 * p / n}[stage]
    answer = per_gpu / 1e9
    q_en = (f"A {_fmt(params_b)}B-parameter model trains with mixed-precision AdamW (bf16 parameters and "
            f"gradients, fp32 master weights, momentum and variance) on N={n} data-parallel GPUs with ZeRO "
            f"stage {stage}. How many GB (10^9 bytes) of model states (parameters, gradients, optimizer "
            f"states; no activations) does each GPU hold?")
    q_zh = (f"一个 {_fmt(params_b)}B 参数的模型用混合精度 AdamW 训练（bf16 参数和梯度，fp32 主权重、一阶和二阶矩），"
            f"在 N={n} 个数据并行 GPU 上使用 ZeRO stage {stage}。每个 GPU 保存多少 GB（10^9 字节）的模型状态"
            f"（参数、梯度、优化器状态；不含激活）？")
    e_en = (f"Per parameter: 2 B bf16 weight + 2 B bf16 gradient + 12 B fp32 (master 4 + m 4 + v 4) = 16 B. "
            f"ZeRO-1 shards the 12, ZeRO-2 also the gradients, ZeRO-3 everything: stage {stage} holds "
            f"{ZERO_BYTES[stage]} = {answer:.4g} GB with P = {_fmt(params_b)}e9, N = {n}.")
    e_zh = (f"每个参数：bf16 权重 2 字节 + bf16 梯度 2 字节 + fp32 的 12 字节（主权重 4 + m 4 + v 4）= 16 字节。"
            f"ZeRO-1 切分这 12 字节，ZeRO-2 再切分梯度，ZeRO-3 全部切分：stage {stage} 为 {ZERO_BYTES[stage]} "
            f"= {answer:.4g} GB（P = {_fmt(params_b)}e9，N = {n}）。")
    return Variant("zero_memory", dict(params=p, n=n, stage=stage), answer, "GB",
                   {"en": q_en, "zh": q_zh}, {"en": e_en, "zh": e_zh})


def _young_daly(rng: random.Random) -> Variant:
    c = rng.choice([30, 60, 120, 300, 600])
    mtbf_gpu_h = rng.choice([20_000, 50_000, 100_000])
    n = rng.choice([1024, 2048, 4096, 16384])
    m = mtbf_gpu_h * 3600 / n
    answer = math.sqrt(2 * c * m) / 60
    q_en = (f"A job on N={n} GPUs takes C={c} s to write a checkpoint. Each GPU fails independently with a mean "
            f"time between failures of {mtbf_gpu_h:,} hours, and any GPU failure stops the job. By Young's "
            f"formula, how many minutes should pass between checkpoints?")
    q_zh = (f"一个作业使用 N={n} 个 GPU，写一次 checkpoint 需要 C={c} 秒。每个 GPU 独立故障，平均故障间隔 "
            f"{mtbf_gpu_h:,} 小时，任一 GPU 故障都会使作业停止。按 Young 公式，两次 checkpoint 之间应间隔多少分钟？")
    e_en = (f"Job MTBF M = {mtbf_gpu_h:,} h / {n} = {m / 3600:.3g} h = {m:.4g} s. tau = sqrt(2 C M) = "
            f"sqrt(2 x {c} x {m:.4g}) = {answer * 60:.4g} s = {answer:.4g} min. It minimises the lost fraction "
            f"C/tau + tau/(2M); Daly's refinement subtracts C when C is not << M.")
    e_zh = (f"作业 MTBF M = {mtbf_gpu_h:,} 小时 / {n} = {m / 3600:.3g} 小时 = {m:.4g} 秒。tau = sqrt(2 C M) = "
            f"{answer * 60:.4g} 秒 = {answer:.4g} 分钟。它使损失比例 C/tau + tau/(2M) 最小；当 C 不远小于 M 时，"
            f"Daly 的修正再减去 C。")
    return Variant("young_daly", dict(checkpoint_s=c, mtbf_gpu_s=mtbf_gpu_h * 3600, n=n), answer, "min",
                   {"en": q_en, "zh": q_zh}, {"en": e_en, "zh": e_zh})


def _training_flops(rng: random.Random) -> Variant:
    params_b = rng.choice([7, 8, 13, 65, 70, 405])
    tokens_t = rng.choice([1, 1.4, 2, 15])
    answer = 6 * params_b * 1e9 * tokens_t * 1e12 / 1e21
    q_en = (f"Estimate the training compute of a dense {params_b}B-parameter transformer trained on "
            f"{_fmt(tokens_t)} trillion tokens, in units of 10^21 FLOPs (ignore attention's s^2 term).")
    q_zh = (f"估算一个 {params_b}B 参数的稠密 Transformer 在 {_fmt(tokens_t)} 万亿 token 上训练的计算量，"
            f"以 10^21 FLOPs 为单位（忽略注意力的 s^2 项）。")
    e_en = (f"C = 6 N D: 2 FLOPs per weight per token forward, 4 backward. 6 x {params_b}e9 x {_fmt(tokens_t)}e12 "
            f"= {answer:.4g}e21 FLOPs. Attention adds 12 l s d per token, small unless s is comparable to 6d.")
    e_zh = (f"C = 6 N D：前向每个 token 每个权重 2 FLOPs，反向 4 FLOPs。6 x {params_b}e9 x {_fmt(tokens_t)}e12 = "
            f"{answer:.4g}e21 FLOPs。注意力每个 token 另加 12 l s d，除非序列长度 s 与 6d 相当，否则很小。")
    return Variant("training_flops", dict(params=params_b * 1e9, tokens=tokens_t * 1e12), answer, "1e21 FLOPs",
                   {"en": q_en, "zh": q_zh}, {"en": e_en, "zh": e_zh})


GPUS = {"A100": 312e12, "H100 SXM": 989e12}
"""Dense bf16 peak FLOP/s per GPU (no sparsity)."""


def _training_days(rng: random.Random) -> Variant:
    params_b = rng.choice([7, 13, 65, 70, 405])
    tokens_t = rng.choice([1, 1.4, 2, 15])
    gpu = rng.choice(sorted(GPUS))
    g = rng.choice([1024, 2048, 4096, 16384])
    mfu = rng.choice([0.35, 0.4, 0.45, 0.5])
    flops = 6 * params_b * 1e9 * tokens_t * 1e12
    answer = flops / (g * GPUS[gpu] * mfu) / 86400
    q_en = (f"How many days does it take to train a {params_b}B-parameter model on {_fmt(tokens_t)} trillion "
            f"tokens with {g:,} {gpu} GPUs (bf16 dense peak {GPUS[gpu] / 1e12:.0f} TFLOP/s) at {mfu:.0%} MFU? "
            f"Use 6ND for the training FLOPs.")
    q_zh = (f"用 {g:,} 个 {gpu} GPU（bf16 稠密峰值 {GPUS[gpu] / 1e12:.0f} TFLOP/s），在 {mfu:.0%} 的 MFU 下，"
            f"把一个 {params_b}B 参数的模型训练 {_fmt(tokens_t)} 万亿 token 需要多少天？训练 FLOPs 按 6ND 计。")
    e_en = (f"time = 6ND / (G x peak x MFU) = {flops:.3g} / ({g} x {GPUS[gpu]:.3g} x {mfu}) = "
            f"{answer * 86400:.4g} s = {answer:.4g} days (failures and restarts come on top: see goodput).")
    e_zh = (f"时间 = 6ND / (G x 峰值 x MFU) = {flops:.3g} / ({g} x {GPUS[gpu]:.3g} x {mfu}) = "
            f"{answer * 86400:.4g} 秒 = {answer:.4g} 天（故障与重启另计：见 goodput）。")
    return Variant("training_days", dict(params=params_b * 1e9, tokens=tokens_t * 1e12, gpus=g,
                                         peak_flops=GPUS[gpu], mfu=mfu),
                   answer, "days", {"en": q_en, "zh": q_zh}, {"en": e_en, "zh": e_zh})


def _tokens_per_second_mfu(rng: random.Random) -> Variant:
    params_b = rng.choice([1.3, 7, 13, 65, 70])
    gpu = rng.choice(sorted(GPUS))
    mfu = rng.choice([0.3, 0.4, 0.47, 0.55])
    answer = mfu * GPUS[gpu] / (6 * params_b * 1e9)
    q_en = (f"A {_fmt(params_b)}B-parameter model trains at {mfu:.0%} MFU on {gpu} GPUs (bf16 dense peak "
            f"{GPUS[gpu] / 1e12:.0f} TFLOP/s). How many tokens per second does each GPU process? Use 6N FLOPs "
            f"per token.")
    q_zh = (f"一个 {_fmt(params_b)}B 参数的模型在 {gpu} GPU（bf16 稠密峰值 {GPUS[gpu] / 1e12:.0f} TFLOP/s）上以 "
            f"{mfu:.0%} 的 MFU 训练。每个 GPU 每秒处理多少 token？每个 token 按 6N FLOPs 计。")
    e_en = (f"tokens/s/GPU = MFU x peak / (6N) = {mfu} x {GPUS[gpu]:.3g} / (6 x {_fmt(params_b)}e9) = "
            f"{answer:.4g}. Read backwards, it is how MFU is measured: LLaMA-65B's 380 tokens/s/GPU on A100 "
            f"is 380 x 6 x 65e9 / 312e12 = 47% MFU.")
    e_zh = (f"每 GPU tokens/s = MFU x 峰值 / (6N) = {mfu} x {GPUS[gpu]:.3g} / (6 x {_fmt(params_b)}e9) = "
            f"{answer:.4g}。反过来就是 MFU 的测法：LLaMA-65B 在 A100 上每 GPU 380 tokens/s，"
            f"即 380 x 6 x 65e9 / 312e12 = 47% MFU。")
    return Variant("tokens_per_second_mfu", dict(params=params_b * 1e9, peak_flops=GPUS[gpu], mfu=mfu),
                   answer, "tokens/s", {"en": q_en, "zh": q_zh}, {"en": e_en, "zh": e_zh})


def _grad_accumulation_steps(rng: random.Random) -> Variant:
    dp = rng.choice([8, 16, 32, 64, 128])
    mbs = rng.choice([1, 2, 4])
    steps = rng.choice([1, 2, 4, 8, 16])
    seq = rng.choice([2048, 4096])
    gbs = steps * dp * mbs
    q_en = (f"The global batch is {gbs:,} sequences of {seq} tokens ({gbs * seq / 1e6:.3g}M tokens). Training "
            f"runs with dp={dp} data-parallel replicas and a micro-batch of {mbs} sequence(s). How many "
            f"micro-batches does each replica accumulate per optimizer step?")
    q_zh = (f"全局 batch 为 {gbs:,} 条长度 {seq} 的序列（{gbs * seq / 1e6:.3g}M token）。训练使用 dp={dp} 个数据并行"
            f"副本，micro-batch 为 {mbs} 条序列。每个副本每个优化器 step 要累积多少个 micro-batch？")
    e_en = (f"accumulation steps = B / (dp x mbs) = {gbs} / ({dp} x {mbs}) = {steps}. Gradients are all-reduced "
            f"once, after the last micro-batch (DDP's no_sync for the others).")
    e_zh = (f"累积步数 = B / (dp x mbs) = {gbs} / ({dp} x {mbs}) = {steps}。梯度只在最后一个 micro-batch 后 "
            f"all-reduce 一次（其余用 DDP 的 no_sync）。")
    return Variant("grad_accumulation_steps", dict(global_batch=gbs, dp=dp, micro_batch=mbs), steps, "",
                   {"en": q_en, "zh": q_zh}, {"en": e_en, "zh": e_zh})


def _sjf_mean_completion(rng: random.Random) -> Variant:
    durations = rng.sample([1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 24], 4)
    ordered = sorted(durations)
    finish, t = [], 0
    for d in ordered:
        t += d
        finish.append(t)
    answer = sum(finish) / len(finish)
    jobs = ", ".join(f"{d} h" for d in durations)
    q_en = (f"Four training jobs, each needing the whole cluster, arrive at time 0 with run times {jobs}. "
            f"The scheduler runs them one at a time, shortest job first. What is the mean job completion "
            f"time, in hours?")
    q_zh = (f"四个都需要整个集群的训练作业在时刻 0 到达，运行时间分别为 {jobs}。调度器一次运行一个，采用最短作业优先"
            f"（SJF）。平均作业完成时间是多少小时？")
    e_en = (f"SJF order {ordered}: completions {finish}, mean {answer:.4g} h. SJF minimises the mean when all "
            f"jobs are known at time 0; FIFO in the given order would give "
            f"{_mean_prefix(durations):.4g} h. It needs run-time estimates, which a simulator can give.")
    e_zh = (f"SJF 顺序 {ordered}：完成时刻 {finish}，平均 {answer:.4g} 小时。所有作业在 0 时刻已知时 SJF 使平均值最小；"
            f"按给出顺序 FIFO 则为 {_mean_prefix(durations):.4g} 小时。它需要运行时间估计，模拟器可以给出。")
    return Variant("sjf_mean_completion", dict(durations=durations), answer, "h",
                   {"en": q_en, "zh": q_zh}, {"en": e_en, "zh": e_zh})


def _mean_prefix(durations: list) -> float:
    total, acc = 0, 0
    for d in durations:
        acc += d
        total += acc
    return total / len(durations)


def _proportional_split_speedup(rng: random.Random) -> Variant:
    n = rng.choice([3, 4, 5])
    speeds = [rng.choice([1.0, 1.0, 1.5, 2.0, 3.0]) for _ in range(n)]
    answer = sum(speeds) / (n * min(speeds))
    sp = ", ".join(_fmt(s) for s in speeds)
    q_en = (f"{n} synchronous data-parallel workers process samples at relative speeds {sp}. Splitting the "
            f"global batch in proportion to speed instead of equally: by what factor does the step get faster "
            f"(ignore communication)?")
    q_zh = (f"{n} 个同步数据并行 worker 处理样本的相对速度为 {sp}。把全局 batch 按速度比例分配而不是平均分配，"
            f"一个 step 快多少倍（忽略通信）？")
    e_en = (f"Equal split: each gets W/n, the step waits for the slowest: W/(n x min v). Proportional: every "
            f"worker finishes together at W/sum(v). Speedup = sum(v)/(n x min v) = {sum(speeds):.4g}/({n} x "
            f"{_fmt(min(speeds))}) = {answer:.4g}. Weight each worker's gradient by its sample count.")
    e_zh = (f"平均分配：每个 worker 得到 W/n，step 等最慢的：W/(n x min v)。按比例分配：所有 worker 同时在 W/sum(v) "
            f"完成。加速比 = sum(v)/(n x min v) = {answer:.4g}。梯度要按各自的样本数加权平均。")
    return Variant("proportional_split_speedup", dict(speeds=speeds), answer, "x",
                   {"en": q_en, "zh": q_zh}, {"en": e_en, "zh": e_zh})


def _cp_gather_bytes(rng: random.Random) -> Variant:
    s = rng.choice([32768, 65536, 131072, 262144])
    b = rng.choice([1, 1, 2])
    kv = rng.choice([8, 8, 16])
    hd = 128
    t = rng.choice([1, 2, 4, 8])
    c = rng.choice([2, 4, 8, 16])
    answer = 2 * b * s * (kv // t) * hd * 2 / 2**20
    q_en = (f"Context parallelism over cp={c} ranks, tensor parallelism t={t}: a model with {kv} key/value heads "
            f"of dimension {hd}, a micro-batch of {b} sequence(s) of {s:,} tokens, bf16. How many MiB does one "
            f"block's all-gather of K and V return on one GPU?")
    q_zh = (f"上下文并行 cp={c}，张量并行 t={t}：模型有 {kv} 个维度为 {hd} 的 key/value 头，micro-batch 为 {b} 条 "
            f"{s:,} token 的序列，bf16。一个块对 K 和 V 的 all-gather 在一个 GPU 上返回多少 MiB？")
    e_en = (f"The gather returns the K and V of the whole sequence on one tensor-parallel rank: 2 (K and V) x b x s "
            f"x (kv/t) x hd x 2 bytes = 2 x {b} x {s:,} x {kv // t} x {hd} x 2 = {answer:.4g} MiB, whatever cp is "
            f"(cp={c} only decides that {c - 1}/{c} of it comes from the other ranks). The backward reduce-scatters "
            f"the same bytes of dK, dV.")
    e_zh = (f"all-gather 返回一个张量并行 rank 上整条序列的 K 和 V：2（K 和 V）x b x s x (kv/t) x hd x 2 字节 = "
            f"{answer:.4g} MiB，与 cp 无关（cp={c} 只决定其中 {c - 1}/{c} 来自其他 rank）。反向对 dK、dV 做同样字节数的 "
            f"reduce-scatter。")
    return Variant("cp_gather_bytes", dict(b=b, s=s, n_kv_heads=kv, head_dim=hd, tp=t, cp=c, bytes=2), answer,
                   "MiB", {"en": q_en, "zh": q_zh}, {"en": e_en, "zh": e_zh})


def _ep_dispatch_bytes(rng: random.Random) -> Variant:
    s = rng.choice([4096, 8192, 16384, 32768])
    b = rng.choice([1, 1, 2, 4])
    k = rng.choice([1, 2, 2, 8])
    d = rng.choice([4096, 5120, 7168])
    t = rng.choice([1, 2, 4, 8])
    ep = rng.choice([2, 4, 8])
    answer = b * s * k * (d // t) * 2 / 2**20
    q_en = (f"A mixture of experts with top-{k} routing, hidden size {d}, expert parallelism ep={ep}, tensor "
            f"parallelism t={t} (each tp rank exchanges d/t of every row), a micro-batch of {b} sequence(s) of "
            f"{s:,} tokens, bf16. How many MiB does one GPU hand one block's dispatch all-to-all?")
    q_zh = (f"一个 top-{k} 路由的混合专家模型，隐藏维度 {d}，专家并行 ep={ep}，张量并行 t={t}（每个 tp rank 交换每行的 "
            f"d/t），micro-batch 为 {b} 条 {s:,} token 的序列，bf16。一个 GPU 在一个块的 dispatch all-to-all 中交出多少 MiB？")
    e_en = (f"Every token leaves k times: b x s x k x (d/t) x 2 bytes = {b} x {s:,} x {k} x {d // t} x 2 = "
            f"{answer:.4g} MiB, whatever ep is (ep={ep} only decides that 1/{ep} of it stays on this GPU). The combine "
            f"sends as many back, and the backward repeats both.")
    e_zh = (f"每个 token 发出 k 份：b x s x k x (d/t) x 2 字节 = {answer:.4g} MiB，与 ep 无关（ep={ep} 只决定其中 1/{ep} "
            f"留在本 GPU）。combine 送回同样多的字节，反向再各做一次。")
    return Variant("ep_dispatch_bytes", dict(b=b, s=s, k=k, dim=d, tp=t, ep=ep, bytes=2), answer, "MiB",
                   {"en": q_en, "zh": q_zh}, {"en": e_en, "zh": e_zh})


VARIANTS: dict[str, Callable[[random.Random], Variant]] = {
    "pipeline_bubble": _pipeline_bubble,
    "ring_all_reduce_bytes": _ring_all_reduce_bytes,
    "alpha_beta_all_reduce": _alpha_beta_all_reduce,
    "zero_memory": _zero_memory,
    "young_daly": _young_daly,
    "training_flops": _training_flops,
    "training_days": _training_days,
    "tokens_per_second_mfu": _tokens_per_second_mfu,
    "grad_accumulation_steps": _grad_accumulation_steps,
    "sjf_mean_completion": _sjf_mean_completion,
    "proportional_split_speedup": _proportional_split_speedup,
    "cp_gather_bytes": _cp_gather_bytes,
    "ep_dispatch_bytes": _ep_dispatch_bytes,
}


def draw_variant(name: str, rng: random.Random) -> Variant:
    """Draw one question of variant `name` with fresh numbers (KeyError names the unknown variant)."""
    if name not in VARIANTS:
        raise KeyError(f"unknown quiz variant {name!r}; known: {', '.join(VARIANTS)}")
    return VARIANTS[name](rng)


def generate_variant(name: str, rng: random.Random, lang: str = "en") -> tuple:
    """(question_en, question_zh, answer_value, explanation) of a freshly drawn variant; explanation in `lang`."""
    v = draw_variant(name, rng)
    return v.question["en"], v.question["zh"], v.answer, v.explanation[lang]
