"""Reference solutions for the pipeline-parallel exercises (lab 05). Same functions as
labs/exercises/pipeline_parallel.py.

p stages, m micro-batches per step, t_f and t_b the forward and backward of one micro-batch on one stage.
GPipe and 1F1B both take (m + p - 1)(t_f + t_b) per step with equal stages: the bubble is (p-1)/(m+p-1).
1F1B holds at most p - r micro-batches of activations on rank r (GPipe holds m); interleaving v chunks per
rank cuts the bubble to (p-1)/(v m + p - 1).
"""

from __future__ import annotations

SCHEDULES = ("gpipe", "1f1b", "interleaved_1f1b")


def bubble_fraction(schedule: str, p: int, m: int, v: int = 1) -> float:
    """Exercise 5.1: idle share of a step with equal stages and free communication.

    gpipe and 1f1b: (p-1)/(m+p-1); interleaved_1f1b with v chunks per rank: (p-1)/(v m + p-1).
    Raise ValueError for an unknown schedule or p, m, v < 1.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; known: {', '.join(SCHEDULES)}")
    if p < 1 or m < 1 or v < 1:
        raise ValueError(f"need p, m, v >= 1, got p={p}, m={m}, v={v}")
    if schedule != "interleaved_1f1b":
        v = 1
    return (p - 1) / (v * m + p - 1)


def one_f_one_b_order(p: int, m: int, rank: int) -> list:
    """Exercise 5.2: the tasks rank `rank` of a p-stage pipeline runs under 1F1B, as ("F", i) / ("B", i).

    min(p - rank - 1, m) warm-up forwards, then pairs (forward of the next micro-batch, backward of the
    oldest), then the remaining backwards (cool-down).
    """
    warm = min(p - rank - 1, m)
    order = [("F", i) for i in range(warm)]
    for i in range(m - warm):
        order += [("F", warm + i), ("B", i)]
    return order + [("B", i) for i in range(m - warm, m)]


def peak_in_flight(schedule: str, p: int, m: int, rank: int) -> int:
    """Exercise 5.3: most micro-batches whose activations rank `rank` holds at once (forward done, backward
    not yet): gpipe m; 1f1b min(p - rank, m)."""
    if schedule == "gpipe":
        return m
    if schedule == "1f1b":
        return min(p - rank, m)
    raise ValueError(f"unknown schedule {schedule!r}")


def partition_stages(costs: list, p: int) -> list:
    """Exercise 5.4: cut `costs` (per layer, in order) into p contiguous non-empty stages minimising the
    largest stage sum; return the p stage sizes. Dynamic programme over (layers used, stages used), or a
    binary search on the answer with a greedy check. Raise ValueError unless 1 <= p <= len(costs)."""
    n = len(costs)
    if not 1 <= p <= n:
        raise ValueError(f"cannot cut {n} layers into {p} non-empty stages")
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(p + 1)]
    cut = [[0] * (n + 1) for _ in range(p + 1)]
    best[0][0] = 0.0
    for k in range(1, p + 1):
        for i in range(k, n - (p - k) + 1):
            for j in range(k - 1, i):
                worst = max(best[k - 1][j], prefix[i] - prefix[j])
                if worst < best[k][i]:
                    best[k][i], cut[k][i] = worst, j
    sizes, i = [], n
    for k in range(p, 0, -1):
        sizes.append(i - cut[k][i])
        i = cut[k][i]
    return sizes[::-1]


def pipeline_step(stage, inputs: list, targets: list, rank: int, world_size: int, loss_fn, shape) -> float:
    """Exercise 5.5: one training step of a `world_size`-stage pipeline under 1F1B, on batched p2p.

    Stage r = rank r of the default process group. Forward: rank 0 feeds inputs[i]; other ranks receive the
    activation (float32, `shape`) from rank - 1 and mark it requires_grad; the last rank computes
    loss_fn(out, targets[i]) / m. Backward: the last rank backpropagates its loss; the others receive
    d(out) from rank + 1 and call out.backward(grad); every rank but 0 sends the gradient of its input back.
    Every message goes through batch_isend_irecv, and in the steady state a send is paired with the next
    receive in one batch (Megatron-LM's send_forward_recv_backward / send_backward_recv_forward), so no two
    ranks wait for each other. Returns the sum of the m losses on the last rank, 0.0 elsewhere.
    """
    import torch
    import torch.distributed as dist

    m = len(inputs)
    first, last = rank == 0, rank == world_size - 1
    warm = min(world_size - rank - 1, m)
    held, total = {}, [0.0]

    def post(send=None, to=None, recv_from=None):
        ops, buf = [], None
        if send is not None:
            ops.append(dist.P2POp(dist.isend, send.detach().contiguous(), to))
        if recv_from is not None:
            buf = torch.empty(shape)
            ops.append(dist.P2POp(dist.irecv, buf, recv_from))
        if ops:
            for req in dist.batch_isend_irecv(ops):
                req.wait()
        return buf

    def forward(i, received):
        x = inputs[i] if first else received.requires_grad_()
        out = stage(x)
        if last:
            out = loss_fn(out, targets[i]) / m
            total[0] += float(out) * m
        held[i] = (x, out)
        return None if last else out

    def backward(i, grad):
        x, out = held.pop(i)
        out.backward() if last else out.backward(grad)
        return None if first else x.grad

    def recv_forward():
        return None if first else post(recv_from=rank - 1)

    for i in range(warm):                                              # warm-up: forwards only
        post(send=forward(i, recv_forward()), to=rank + 1)             # (last rank: warm = 0)
    received = recv_forward() if m > warm else None
    for j in range(m - warm):                                          # steady state: one forward, one backward
        out = forward(warm + j, received)
        grad = None if last else post(send=out, to=rank + 1, recv_from=rank + 1)
        dx = backward(j, grad)
        more = j < m - warm - 1
        if first:
            received = None
        elif more:
            received = post(send=dx, to=rank - 1, recv_from=rank - 1)
        else:
            post(send=dx, to=rank - 1)
    for j in range(m - warm, m):                                       # cool-down: backwards only
        dx = backward(j, None if last else post(recv_from=rank + 1))
        if not first:
            post(send=dx, to=rank - 1)
    return total[0]


def zero_bubble_order(p: int, m: int, rank: int) -> list:
    """Exercise 5.6: the tasks rank `rank` runs under zero bubble (ZB-H1), as ("F", i) / ("B", i) / ("W", i).

    1F1B's min(p - rank - 1, m) warm-up forwards and F B pairs, B the input gradient only; the W (weight
    gradient) of the first `rank` backwards is held back, after every later B the oldest held W runs, and
    the rest run at the end, where 1F1B's rank would idle: with unit F, B and W the step takes 3m + p - 1
    (m >= p) against 1F1B's 3(m + p - 1), at the same peak of p micro-batches in flight (held until W).
    """
    warm = min(p - rank - 1, m)
    order = [("F", i) for i in range(warm)]
    held = []
    for i in range(m):
        if warm + i < m:
            order.append(("F", warm + i))
        order.append(("B", i))
        held.append(i)
        if i >= rank:
            order.append(("W", held.pop(0)))
    return order + [("W", i) for i in held]
