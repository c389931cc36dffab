"""Exercises for lab 02, collectives: what a collective costs, and how the ring all-reduce moves the data.

The alpha-beta model: a message of `S` bytes over one link costs `alpha + S / B` (latency plus size over
bandwidth). A ring collective on `n` ranks cuts the buffer into `n` chunks and, at every step, has each
rank send one chunk to its right neighbour, so all links are busy at once.

Replace each `raise NotImplementedError(...)` with your code, then grade yourself:

    llama-course grade --only collectives          # or: pytest tests/exercises/test_collectives.py

The docs page docs/concepts/collectives.md has the theory; `simulator/collectives.py` and
`llama_course/parallel/collectives.py` use the same formulas.
"""

from __future__ import annotations


def ring_all_reduce_bytes(size_bytes: float, n: int) -> float:
    """Exercise 2.1: bytes each rank sends in a ring all-reduce of a `size_bytes` buffer over `n` ranks.

    Hint: a ring all-reduce is a reduce-scatter followed by an all-gather; count the chunks each phase sends.
    With one rank nothing is sent. Raise ValueError for n < 1 or a negative size.
    """
    raise NotImplementedError("Exercise 2.1: ring_all_reduce_bytes")


def alpha_beta_time(op: str, size_bytes: float, n: int, latency_s: float, bandwidth_Bps: float) -> float:
    """Exercise 2.2: seconds a ring collective takes under the alpha-beta model.

    `op` is one of all_reduce, reduce_scatter, all_gather, all_to_all (ring algorithms; `size_bytes` is the
    full buffer: the all-gather's output, the reduce-scatter's input), or send_recv (one message of
    `size_bytes`). Each ring step moves one chunk of size/n over every link at once and costs
    alpha + (size/n)/B; how many steps does each op take? Raise ValueError for an unknown op or n < 1.
    """
    raise NotImplementedError("Exercise 2.2: alpha_beta_time")


def bus_bandwidth(op: str, size_bytes: float, time_s: float, n: int) -> float:
    """Exercise 2.3: the bus bandwidth nccl-tests reports, in bytes/s.

    algbw = size/time; busbw = algbw x a factor chosen so that busbw is comparable with the link bandwidth
    whatever n is. Work out the factor of each op from exercise 2.2: all_reduce, reduce_scatter, all_gather,
    all_to_all, broadcast, reduce, send_recv. Raise ValueError for an unknown op.
    """
    raise NotImplementedError("Exercise 2.3: bus_bandwidth")


def hierarchical_all_reduce_bytes(size_bytes: float, nodes: int, gpus_per_node: int) -> tuple:
    """Exercise 2.4: (intra-node, inter-node) bytes each GPU sends in a hierarchical all-reduce.

    The algorithm: reduce-scatter inside each node (a ring over its g GPUs), then all-reduce each GPU's
    shard across the nodes (a ring over the GPUs with the same local rank), then all-gather inside the node.
    Return the two byte counts as a tuple. Raise ValueError for nodes < 1, gpus_per_node < 1 or a negative
    size.
    """
    raise NotImplementedError("Exercise 2.4: hierarchical_all_reduce_bytes")


def ring_all_reduce(buffers: list) -> tuple:
    """Exercise 2.5: run a ring all-reduce (sum) on `n` equal-length lists, one per rank, chunk by chunk.

    Return `(results, messages)`: `results[r]` is rank r's buffer afterwards (the element-wise sum of all the
    buffers) and `messages` a list of `(step, src, dst, chunk)`: at every one of the 2(n-1) steps each rank
    sends exactly one chunk to its right neighbour (r + 1) % n. Chunks are the n contiguous slices of the
    buffer as numpy.array_split cuts them. Reduce-scatter first (the neighbour adds what it receives), then
    all-gather (the neighbour overwrites). Every rank sends before anyone adds. Do not modify the inputs,
    and compute the sums only through the messages you record.
    """
    raise NotImplementedError("Exercise 2.5: ring_all_reduce")


def ring_all_reduce_p2p(tensor, group=None) -> int:
    """Exercise 2.6: all-reduce (sum) `tensor` in place over a torch.distributed group, on send/recv only.

    This is exercise 2.5 for real: every rank runs this function at once (3 gloo processes in the graded
    test) and may use only point-to-point messages; the collectives (`all_reduce`, `reduce_scatter`,
    `all_gather`, ...) are switched off while it runs. Cut the flattened tensor into `n` chunks as
    `torch.tensor_split` does (sizes need not divide n), then do n - 1 reduce-scatter steps (send chunk
    (r - s) % n to the right neighbour, receive chunk (r - s - 1) % n from the left one and add it) and
    n - 1 all-gather steps (the same, overwriting).

    Deadlock: if every rank sends first and waits for the send to finish, nobody is receiving. NCCL's rule
    (and the graded test's, which runs in the course's strict mode): post each step's send and receive
    *together*, in one `dist.batch_isend_irecv([dist.P2POp(dist.isend, ...), dist.P2POp(dist.irecv, ...)])`,
    then wait for the requests it returns. `group=None` is the default group; with a group, P2POp wants
    global ranks (`dist.get_global_rank(group, r)`) and `group=group`. Return the number of elements this
    rank sent. The test compares with `dist.all_reduce` and records every message on the wire: only
    batched sends to the right neighbour, 2 (n-1)/n of the buffer when n divides it.
    """
    raise NotImplementedError("Exercise 2.6: ring_all_reduce_p2p")
