"""Exercises for lab 05, pipeline parallelism: the bubble, the 1F1B order, memory in flight, balanced
stages, a real pipeline step on send/recv, and the zero-bubble order.

The layers are cut into p stages on p ranks and the global batch into m micro-batches. Stage r runs the
forward F(i) of micro-batch i once stage r-1 has sent its activation, and the backward B(i) once stage r+1
has sent the gradient of that activation. With equal stages (t_f, t_b per micro-batch) every schedule
below needs at least (m + p - 1)(t_f + t_b): the first micro-batch takes p forwards to reach the end, the
last gradient p backwards to come back.

Replace each `raise NotImplementedError(...)` with your code, then grade yourself:

    llama-course grade --only pipeline_parallel      # or: pytest tests/exercises/test_pipeline_parallel.py

Theory: docs/concepts/pipeline_parallel.md. The runtime (llama_course/parallel/pipeline_parallel.py) and the
simulator (simulator/pipeline_parallel.py) run the same task orders.
"""

from __future__ import annotations


def bubble_fraction(schedule: str, p: int, m: int, v: int = 1) -> float:
    """Exercise 5.1: the idle share of a step with equal stages and free communication.

    `schedule` is gpipe, 1f1b or interleaved_1f1b (v chunks per rank, virtual stage k = c p + r: each
    chunk's forward takes t_f / v). Derive it: how long is the step, and how much of it does one rank
    compute? Do GPipe and 1F1B differ? Raise ValueError for an unknown schedule or p, m, v < 1.
    """
    raise NotImplementedError("Exercise 5.1: bubble_fraction")


def one_f_one_b_order(p: int, m: int, rank: int) -> list:
    """Exercise 5.2: the order of tasks rank `rank` (0-based) of a p-stage pipeline runs under 1F1B.

    Return a list of ("F", i) and ("B", i), each micro-batch i in range(m) once forward and once backward.
    1F1B (PipeDream-Flush): a few warm-up forwards, so that the pipeline fills; then alternate one forward
    and one backward (steady state); then the remaining backwards (cool-down). How many warm-up forwards
    does rank r need so that it never waits in the steady state, and never holds more than p - r
    micro-batches? (The last stage needs none. Mind m < p.)
    """
    raise NotImplementedError("Exercise 5.2: one_f_one_b_order")


def peak_in_flight(schedule: str, p: int, m: int, rank: int) -> int:
    """Exercise 5.3: the most micro-batches whose activations rank `rank` holds at once (forward done,
    backward not yet) under `schedule` (gpipe or 1f1b). This is what the schedule costs in memory: multiply
    by the activation bytes of one micro-batch on one stage. Raise ValueError for another schedule.
    """
    raise NotImplementedError("Exercise 5.3: peak_in_flight")


def partition_stages(costs: list, p: int) -> list:
    """Exercise 5.4: balanced stages. Cut the layers (their costs in order, e.g. seconds or FLOPs) into p
    contiguous non-empty stages so that the most expensive stage is as cheap as possible (a pipeline runs at
    the pace of its slowest stage). Return the p stage sizes (numbers of layers, summing to len(costs)).

    Hint: a dynamic programme over (layers placed, stages used), or a binary search on the answer with a
    greedy feasibility check. Raise ValueError unless 1 <= p <= len(costs).
    """
    raise NotImplementedError("Exercise 5.4: partition_stages")


def pipeline_step(stage, inputs: list, targets: list, rank: int, world_size: int, loss_fn, shape) -> float:
    """Exercise 5.5: run one training step of a real pipeline under your 1F1B order, on send/recv.

    The default torch.distributed process group (gloo) has `world_size` ranks; rank r holds stage r, the
    torch module `stage`. There are m = len(inputs) micro-batches.
      forward  F(i): rank 0 runs stage(inputs[i]); rank r > 0 receives the activation (a float32 tensor of
               `shape`) from rank r - 1, marks it requires_grad, and runs its stage on it. Every rank but
               the last sends its output to rank r + 1. The last rank computes loss_fn(out, targets[i]) / m.
      backward B(i): the last rank backpropagates that loss; rank r < last receives d(out) from rank r + 1
               and calls out.backward(grad). Every rank but 0 then sends the gradient of its input to r - 1.
    Gradients accumulate in the stage's parameters (do not zero them). Return the sum of the m losses
    (not divided by m) on the last rank and 0.0 on the others. Run the tasks in your 1F1B order (5.2).

    Messages, as NCCL wants them (the graded test runs the course's strict mode, which enforces NCCL's
    rules on gloo, and records every message): post point-to-point operations with
    `dist.batch_isend_irecv([dist.P2POp(dist.isend, t, peer), dist.P2POp(dist.irecv, buf, peer), ...])` and
    wait for the requests it returns; a batch completes only when the peer has posted the matching
    operations. Now trace p = 2, m = 2 with one batch per message: rank 0 runs F0, F1 and posts "send
    activation 1"; rank 1 has run F0 and B0 and posts "send gradient 0". Each waits for the other to
    receive: deadlock. Megatron-LM's way out: in the steady state, post the send of a forward's output and
    the receive of the gradient you will need next in *one* batch, and the send of a backward's input
    gradient with the receive of the next activation in one batch. Which of these has nothing to send or
    receive on the first and the last stage? Messages between two ranks match in the order they were
    posted, so no tags are needed.
    """
    raise NotImplementedError("Exercise 5.5: pipeline_step")


def zero_bubble_order(p: int, m: int, rank: int) -> list:
    """Exercise 5.6: the order of tasks rank `rank` (0-based) of a p-stage pipeline runs under zero bubble
    (ZB-H1, Qi et al. 2023).

    Zero bubble splits each backward in two: B(i), the gradient of the stage's input, which stage r - 1
    waits for, and W(i), the gradient of the stage's weights, which no other stage waits for (it needs only
    this rank's own B(i)). Return a list of ("F", i), ("B", i) and ("W", i), each micro-batch i in range(m)
    once of each kind. The rule: 1F1B's min(p - r - 1, m) warm-up forwards, then pairs of the next forward
    and the oldest backward B (5.2); rank r holds back the W of its first r backwards and, after every later
    B, runs one W (the oldest held back); the W's still held back run at the end, where 1F1B's rank r would
    idle. With t_F = t_B = t_W = 1 and free communication the step then takes 3m + p - 1 for m >= p (1F1B,
    with its backward of 2 units, 3(m + p - 1)), and no rank holds more than p micro-batches in flight
    (forward done, W not yet). Why can rank r hold back r W's without ever making the next stage wait?
    """
    raise NotImplementedError("Exercise 5.6: zero_bubble_order")
