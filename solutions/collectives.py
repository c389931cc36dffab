"""Reference solutions for the collectives exercises (lab 02). Same functions as labs/exercises/collectives.py.

The cost of a collective under the alpha-beta model: a message of `S` bytes over one link costs
`alpha + S / B`. A ring collective on `n` ranks moves the buffer in `n` chunks of `S / n`:

    reduce-scatter, all-gather, all-to-all   n-1 steps     (n-1) (alpha + S / (n B))
    all-reduce = reduce-scatter + all-gather  2(n-1) steps  2(n-1) (alpha + S / (n B))

so each rank sends `2(n-1)/n x S` bytes in an all-reduce: bandwidth-optimal, almost independent of `n`.
nccl-tests reports `busbw = algbw x factor` (algbw = S / t) with the factor that makes busbw comparable to the
link's bandwidth whatever `n` is: 2(n-1)/n for all-reduce, (n-1)/n for reduce-scatter, all-gather and
all-to-all, 1 for broadcast, reduce and send/recv.
"""

from __future__ import annotations

RING_STEPS = {"all_reduce": 2, "reduce_scatter": 1, "all_gather": 1, "all_to_all": 1}
"""Rounds of n-1 chunk transfers each ring collective takes."""

BUS_FACTOR_KINDS = {"all_reduce": "2(n-1)/n", "reduce_scatter": "(n-1)/n", "all_gather": "(n-1)/n",
                    "all_to_all": "(n-1)/n", "broadcast": "1", "reduce": "1", "send_recv": "1"}


def ring_all_reduce_bytes(size_bytes: float, n: int) -> float:
    """Exercise 2.1: bytes each rank sends in a ring all-reduce of a `size_bytes` buffer over `n` ranks.

    Reduce-scatter sends n-1 chunks of size/n, all-gather another n-1: 2(n-1)/n x size. One rank sends
    nothing. Raise ValueError for n < 1 or a negative size.
    """
    if n < 1 or size_bytes < 0:
        raise ValueError(f"need n >= 1 and size_bytes >= 0, got n={n}, size_bytes={size_bytes}")
    return 2 * (n - 1) / n * size_bytes


def alpha_beta_time(op: str, size_bytes: float, n: int, latency_s: float, bandwidth_Bps: float) -> float:
    """Exercise 2.2: seconds a ring collective takes under the alpha-beta model.

    `op` is one of all_reduce, reduce_scatter, all_gather, all_to_all (ring algorithms, `size_bytes` the full
    buffer: the all-gather output, the reduce-scatter input), or send_recv (one message of `size_bytes`).
    Each of the steps moves one chunk of size/n over every link at once and costs alpha + (size/n)/B.
    Raise ValueError for an unknown op.
    """
    if op == "send_recv":
        return latency_s + size_bytes / bandwidth_Bps
    if op not in RING_STEPS:
        raise ValueError(f"unknown collective {op!r}; known: {', '.join([*RING_STEPS, 'send_recv'])}")
    if n < 1:
        raise ValueError(f"need n >= 1, got {n}")
    steps = RING_STEPS[op] * (n - 1)
    return steps * (latency_s + size_bytes / n / bandwidth_Bps)


def bus_bandwidth(op: str, size_bytes: float, time_s: float, n: int) -> float:
    """Exercise 2.3: nccl-tests bus bandwidth in bytes/s: algbw = size/time times the op's factor.

    Factors: all_reduce 2(n-1)/n; reduce_scatter, all_gather, all_to_all (n-1)/n; broadcast, reduce,
    send_recv 1. Raise ValueError for an unknown op.
    """
    if op not in BUS_FACTOR_KINDS:
        raise ValueError(f"unknown collective {op!r}; known: {', '.join(BUS_FACTOR_KINDS)}")
    factor = {"2(n-1)/n": 2 * (n - 1) / n, "(n-1)/n": (n - 1) / n, "1": 1.0}[BUS_FACTOR_KINDS[op]]
    return size_bytes / time_s * factor


def hierarchical_all_reduce_bytes(size_bytes: float, nodes: int, gpus_per_node: int) -> tuple:
    """Exercise 2.4: (intra-node, inter-node) bytes each GPU sends in a hierarchical all-reduce.

    Reduce-scatter inside the node (ring over g GPUs), all-reduce each GPU's S/g shard across the `nodes`
    nodes (ring over the GPUs with the same local rank), all-gather inside the node:
    intra = 2(g-1)/g x S, inter = 2(nodes-1)/nodes x S/g. Inter-node bytes fall by g against a flat ring.
    """
    g = gpus_per_node
    if nodes < 1 or g < 1 or size_bytes < 0:
        raise ValueError(f"need nodes >= 1, gpus_per_node >= 1, size_bytes >= 0; got {nodes}, {g}, {size_bytes}")
    intra = 2 * (g - 1) / g * size_bytes
    inter = 2 * (nodes - 1) / nodes * size_bytes / g
    return intra, inter


def ring_all_reduce(buffers: list) -> tuple:
    """Exercise 2.5: run a ring all-reduce (sum) on `n` equal-length lists, one per rank, chunk by chunk.

    Returns `(results, messages)`: `results[r]` is rank r's buffer afterwards (the element-wise sum of all
    buffers), `messages` a list of `(step, src, dst, chunk)`: at every step each rank sends exactly one chunk
    to its right neighbour `(r + 1) % n`. Chunks are the `n` contiguous slices of the buffer (as
    numpy.array_split cuts them). Steps 0..n-2 are the reduce-scatter: rank r sends chunk (r - step) % n,
    which its neighbour adds to its own. Steps n-1..2n-3 are the all-gather: rank r sends the chunk it holds
    complete, (r + 1 - k) % n at all-gather step k, and the neighbour overwrites its copy. Inputs are not
    modified.
    """
    n = len(buffers)
    length = len(buffers[0]) if n else 0
    if any(len(b) != length for b in buffers):
        raise ValueError("every rank's buffer must have the same length")
    bounds = _chunk_bounds(length, n)
    data = [list(b) for b in buffers]
    messages = []
    for step in range(n - 1):                                   # reduce-scatter
        sent = [(r, (r - step) % n) for r in range(n)]
        payloads = [data[r][slice(*bounds[c])] for r, c in sent]  # every rank sends before anyone adds
        for (r, c), payload in zip(sent, payloads):
            dst = (r + 1) % n
            lo, _ = bounds[c]
            for i, value in enumerate(payload):
                data[dst][lo + i] += value
            messages.append((step, r, dst, c))
    for k in range(n - 1):                                      # all-gather
        sent = [(r, (r + 1 - k) % n) for r in range(n)]
        payloads = [data[r][slice(*bounds[c])] for r, c in sent]
        for (r, c), payload in zip(sent, payloads):
            dst = (r + 1) % n
            lo, hi = bounds[c]
            data[dst][lo:hi] = payload
            messages.append((n - 1 + k, r, dst, c))
    return data, messages


def _chunk_bounds(length: int, n: int) -> list:
    """[(lo, hi)] of n contiguous chunks, the first length % n of them one longer (numpy.array_split)."""
    base, extra = divmod(length, n) if n else (0, 0)
    bounds, lo = [], 0
    for c in range(n):
        hi = lo + base + (1 if c < extra else 0)
        bounds.append((lo, hi))
        lo = hi
    return bounds


def ring_all_reduce_p2p(tensor, group=None) -> int:
    """Exercise 2.6: ring all-reduce (sum) in place, each step's send and receive in one batch; returns the
    elements this rank sent."""
    import torch
    import torch.distributed as dist

    n = dist.get_world_size(group)
    r = dist.get_rank(group)
    if n == 1:
        return 0
    peer = (lambda i: dist.get_global_rank(group, i)) if group is not None else (lambda i: i)
    right, left = peer((r + 1) % n), peer((r - 1) % n)
    flat = tensor.view(-1) if tensor.is_contiguous() else tensor.reshape(-1).clone()
    chunks = list(torch.tensor_split(flat, n))
    sent = 0

    def exchange(send_index, recv_index):
        nonlocal sent
        outgoing = chunks[send_index].clone()
        incoming = torch.empty_like(chunks[recv_index])
        for req in dist.batch_isend_irecv([dist.P2POp(dist.isend, outgoing, right, group=group),
                                           dist.P2POp(dist.irecv, incoming, left, group=group)]):
            req.wait()
        sent += outgoing.numel()
        return incoming

    for s in range(n - 1):                                   # reduce-scatter: chunk (r+1) % n ends complete
        chunks[(r - s - 1) % n].add_(exchange((r - s) % n, (r - s - 1) % n))
    for s in range(n - 1):                                   # all-gather: pass the complete chunks around
        chunks[(r - s) % n].copy_(exchange((r - s + 1) % n, (r - s) % n))
    if flat.data_ptr() != tensor.data_ptr():
        tensor.copy_(flat.view_as(tensor))
    return sent
