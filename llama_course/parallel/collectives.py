"""Collectives written on point-to-point messages: what NCCL and gloo do inside `all_reduce`.

Every data-parallel strategy is built from five collectives over a group of N ranks holding n elements
of e bytes each (alpha = per-message latency, beta = seconds per byte of one link, full duplex):

    collective                 algorithm here                      bytes sent per rank      time (alpha-beta)
    reduce-scatter             ring, N - 1 steps                   (N-1)/N n e              (N-1) alpha + (N-1)/N n e beta
    all-gather                 ring, N - 1 steps                   (N-1)/N n e              (N-1) alpha + (N-1)/N n e beta
    all-reduce                 ring = reduce-scatter + all-gather  2 (N-1)/N n e            2(N-1) alpha + 2 (N-1)/N n e beta
    all-reduce                 recursive halving-doubling          2 (N-1)/N n e (N = 2^k)  2 log2 N alpha + 2 (N-1)/N n e beta
    broadcast                  binomial tree                       <= n e (log2 N rounds)   log2 N (alpha + n e beta)

The ring is bandwidth-optimal (no algorithm can send less than 2(N-1)/N n e per rank for an all-reduce)
but pays 2(N-1) latencies; halving-doubling (Rabenseifner) sends the same bytes in 2 log2 N steps, so it
wins for small messages and many ranks; NCCL picks ring or tree by size for the same reason. The
nccl-tests "bus bandwidth" divides out the algorithm's own factor so any all-reduce can be compared with
the link speed: busbw = algbw x 2(N-1)/N, where algbw = n e / time.

    ring all-reduce, N = 3, chunks a b c       step 1 (reduce-scatter)       ... after 2(N-1) = 4 steps
    rank0 [a0 b0 c0] --c0--> rank1              rank1 has c0+c1 ...           every rank holds a, b, c summed
    rank1 [a1 b1 c1] --a1--> rank2
    rank2 [a2 b2 c2] --b2--> rank0

Sizes need not divide N: chunk i has n // N elements plus one for the first n % N chunks (`chunk_sizes`).
Before moving data, ranks pass a tiny header (numel, dtype) around the ring, so peers that disagree on a
tensor's size or dtype raise `CollectiveMismatchError` on every rank instead of hanging or reading garbage
(switch it off with check=False once a caller knows the sizes agree). Any dtype gloo can send works; the
reductions run locally in torch (sum, avg, max, min).

Every step posts its send and its receive together, in one `dist.batch_isend_irecv`: on NCCL a rank's
point-to-point operations to one peer run in order on one stream, so in a ring of two ranks that each
post `irecv(left)` and then `isend(right)` both receives wait forever; batched, NCCL starts them together
(Megatron-LM's p2p layer does the same). Strict mode (core/wire.py) checks it on gloo.

Seed questions answered: 8 and 15 (communication optimisation and cost: ring vs tree, alpha-beta),
20 (transfer optimisation: chunking, full duplex), 27 (synchronous communication), 28 (asynchronous: the
engine runs these on a background thread, see data_parallel.py).

    python benchmarks/collectives.py --nproc 2        # algbw / busbw from 1 KB to 64 MB against gloo's own
    pytest tests/test_collectives.py                  # each algorithm against torch.distributed's
"""

from __future__ import annotations

import queue
import threading

import torch
import torch.distributed as dist

OPS = ("sum", "avg", "max", "min")
SEGMENT_BYTES = 1 << 20      # ring steps move chunks in 1 MiB messages so reductions overlap the transfer
_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int8, torch.uint8,
           torch.int16, torch.int32, torch.int64, torch.bool]


class CollectiveMismatchError(RuntimeError):
    """Ranks called the same collective with tensors of different sizes or dtypes."""


class WireCounter:
    """Bytes this rank put on the wire (thread-safe: the engine's communication thread adds to it too)."""

    def __init__(self):
        self.sent = 0
        self._lock = threading.Lock()

    def add(self, nbytes: int) -> None:
        with self._lock:
            self.sent += int(nbytes)

    def take(self) -> int:
        """Bytes counted since the last take()."""
        with self._lock:
            n, self.sent = self.sent, 0
            return n


# ---------------------------------------------------------------------------------------------
# public collectives (each works in place on a contiguous tensor, on any group)
# ---------------------------------------------------------------------------------------------

def ring_all_reduce(tensor: torch.Tensor, group=None, op: str = "sum", check: bool = True,
                    counter: WireCounter | None = None) -> torch.Tensor:
    """All-reduce `tensor` in place with a ring: reduce-scatter then all-gather, 2(N-1) steps."""
    flat, out = _flat(tensor)
    n_ranks = _size(group)
    if check:
        _check_same(flat, group, "ring_all_reduce")
    if n_ranks > 1:
        _ring_reduce_scatter(flat, group, op, counter)
        _ring_all_gather(flat, group, chunk_sizes(flat.numel(), n_ranks), counter)
    return _finish(tensor, flat, out)


def ring_reduce_scatter(tensor: torch.Tensor, group=None, op: str = "sum", check: bool = True,
                        counter: WireCounter | None = None) -> torch.Tensor:
    """Reduce `tensor` over the group; return this rank's chunk (a view of `tensor`, chunk_sizes split).

    Only that chunk of `tensor` holds the reduced result afterwards; the rest holds partial sums.
    """
    flat, out = _flat(tensor)
    if out is not None:
        raise ValueError("ring_reduce_scatter needs a contiguous tensor")
    if check:
        _check_same(flat, group, "ring_reduce_scatter")
    if _size(group) > 1:
        _ring_reduce_scatter(flat, group, op, counter)
    lo, hi = chunk_range(flat.numel(), _size(group), _rank(group))
    return flat[lo:hi]


def ring_all_gather(tensor: torch.Tensor, group=None, check: bool = True,
                    counter: WireCounter | None = None) -> torch.Tensor:
    """In-place all-gather: on entry rank i's chunk i (chunk_sizes split) of `tensor` is valid; on exit all are."""
    flat, out = _flat(tensor)
    if out is not None:
        raise ValueError("ring_all_gather needs a contiguous tensor")
    if check:
        _check_same(flat, group, "ring_all_gather")
    if _size(group) > 1:
        _ring_all_gather(flat, group, chunk_sizes(flat.numel(), _size(group)), counter)
    return tensor


def all_gather_into(output: torch.Tensor, shard: torch.Tensor, group=None, check: bool = True,
                    counter: WireCounter | None = None) -> torch.Tensor:
    """Gather every rank's `shard` into `output` (concatenated in rank order; shard sizes = chunk_sizes)."""
    lo, hi = chunk_range(output.numel(), _size(group), _rank(group))
    if shard.numel() != hi - lo:
        raise CollectiveMismatchError(f"all_gather_into: rank {_rank(group)} holds {shard.numel()} elements "
                                      f"but chunk {_rank(group)} of {output.numel()} has {hi - lo}")
    output.view(-1)[lo:hi].copy_(shard.reshape(-1))
    return ring_all_gather(output, group, check, counter)


def halving_doubling_all_reduce(tensor: torch.Tensor, group=None, op: str = "sum", check: bool = True,
                                counter: WireCounter | None = None) -> torch.Tensor:
    """All-reduce with recursive halving (reduce-scatter) then recursive doubling (all-gather): 2 log2 N steps.

    N not a power of two: the r = N - 2^k extra ranks first fold their data into partners (one extra
    step each way), the 2^k remaining ranks run the algorithm, and the result is sent back.
    """
    flat, out = _flat(tensor)
    if check:
        _check_same(flat, group, "halving_doubling_all_reduce")
    n_ranks, rank = _size(group), _rank(group)
    if n_ranks == 1:
        return _finish(tensor, flat, out)
    p = 1 << (n_ranks.bit_length() - 1)            # largest power of two <= N
    extra = n_ranks - p
    reduce = _reducer(op)
    if rank >= p:                                   # fold into rank - p, then wait for the result
        _exchange(group, flat, rank - p, None, None, counter)
        _exchange(group, None, None, flat, rank - p, counter)
    else:
        if rank < extra:
            tmp = torch.empty_like(flat)
            _exchange(group, None, None, tmp, rank + p, counter)
            reduce(flat, tmp)
        sizes = chunk_sizes(flat.numel(), p)
        offsets = [0]
        for s in sizes:
            offsets.append(offsets[-1] + s)
        span = lambda a, b: flat[offsets[a]:offsets[b]]  # noqa: E731  blocks [a, b) as one view
        lo, hi, mask = 0, p, p >> 1
        tmp = torch.empty(max(offsets[p // 2], 1), dtype=flat.dtype, device=flat.device)   # the larger half
        while mask:                                 # halving: keep half the blocks, send the other half
            mid, partner = (lo + hi) // 2, rank ^ mask
            keep, give = ((mid, hi), (lo, mid)) if rank & mask else ((lo, mid), (mid, hi))
            mine = span(*keep)
            _exchange(group, span(*give), partner, tmp[:mine.numel()], partner, counter)
            reduce(mine, tmp[:mine.numel()])
            lo, hi = keep
            mask >>= 1
        mask = 1                                    # doubling: swap ranges with the partner, grow
        while mask < p:
            partner = rank ^ mask
            theirs = (lo - mask, lo) if rank & mask else (hi, hi + mask)
            _exchange(group, span(lo, hi), partner, span(*theirs), partner, counter)
            lo, hi = min(lo, theirs[0]), max(hi, theirs[1])
            mask <<= 1
        if rank < extra:
            _exchange(group, flat, rank + p, None, None, counter)
    if op == "avg":
        flat.div_(n_ranks) if flat.is_floating_point() else flat.floor_divide_(n_ranks)
    return _finish(tensor, flat, out)


def tree_broadcast(tensor: torch.Tensor, src: int = 0, group=None, check: bool = True,
                   counter: WireCounter | None = None) -> torch.Tensor:
    """Broadcast `tensor` from group rank `src` along a binomial tree: log2 N rounds.

    Virtual rank v = (rank - src) mod N receives from v - 2^j (j = its lowest set bit), then forwards
    to v + 2^i for every i < j:   0 -> 4, 0 -> 2, 4 -> 6, 0 -> 1, 2 -> 3, 4 -> 5, 6 -> 7  (N = 8).
    """
    flat, out = _flat(tensor)
    if check:
        _check_same(flat, group, "tree_broadcast")
    n_ranks, rank = _size(group), _rank(group)
    v, mask = (rank - src) % n_ranks, 1
    while mask < n_ranks:                           # receive once, from the parent
        if v & mask:
            _exchange(group, None, None, flat, (v - mask + src) % n_ranks, counter)
            break
        mask <<= 1
    mask >>= 1
    while mask:                                     # then forward to the children below that bit
        if v + mask < n_ranks:
            _exchange(group, flat, (v + mask + src) % n_ranks, None, None, counter)
        mask >>= 1
    return _finish(tensor, flat, out)


class CommThread:
    """A communication "stream" on CPU: runs submitted collectives one after another on its own thread.

    The training thread keeps computing (backward) while this thread sends and receives; gloo and torch's
    kernels release the GIL, so the two really overlap. It owns a separate process group, so its messages
    never interleave with collectives the training thread issues meanwhile (ZeRO-3's all-gathers).
    `fn(group)` runs on the thread; `wait()` blocks until all submitted work is done and re-raises errors.
    """

    def __init__(self, group):
        self.group = group
        self._queue: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="comm", daemon=True)
        self._thread.start()

    def submit(self, fn) -> None:
        self._queue.put(fn)

    def wait(self) -> None:
        self._queue.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _loop(self) -> None:
        while True:
            fn = self._queue.get()
            try:
                if self._error is None:          # after a failure, drop the rest (wait() raises)
                    fn(self.group)
            except BaseException as e:            # noqa: BLE001  handed to the training thread
                self._error = e
            finally:
                self._queue.task_done()


# ---------------------------------------------------------------------------------------------
# sizes
# ---------------------------------------------------------------------------------------------

def chunk_sizes(n: int, n_ranks: int) -> list[int]:
    """How n elements split over n_ranks: n // N each, one more for the first n % N chunks."""
    q, r = divmod(int(n), int(n_ranks))
    return [q + (1 if i < r else 0) for i in range(n_ranks)]


def chunk_range(n: int, n_ranks: int, index: int) -> tuple[int, int]:
    """[lo, hi) of chunk `index` of n elements split over n_ranks."""
    q, r = divmod(int(n), int(n_ranks))
    lo = index * q + min(index, r)
    return lo, lo + q + (1 if index < r else 0)


def ring_bytes_per_rank(collective: str, numel: int, elem_bytes: int, n_ranks: int) -> float:
    """Bytes one rank sends in the ring algorithms above (what `WireCounter` measures)."""
    factor = {"all_reduce": 2, "reduce_scatter": 1, "all_gather": 1}[collective]
    return factor * (n_ranks - 1) / n_ranks * numel * elem_bytes


# ---------------------------------------------------------------------------------------------
# the rings
# ---------------------------------------------------------------------------------------------

def _ring_reduce_scatter(flat, group, op, counter) -> None:
    """At step s rank r sends chunk (r-s-1) mod N right and adds chunk (r-s-2) mod N from the left.
    After N-1 steps chunk r holds the reduction of every rank's chunk r."""
    n_ranks, rank = _size(group), _rank(group)
    sizes = chunk_sizes(flat.numel(), n_ranks)
    offsets = [sum(sizes[:i]) for i in range(n_ranks)]
    chunk = lambda i: flat[offsets[i % n_ranks]: offsets[i % n_ranks] + sizes[i % n_ranks]]  # noqa: E731
    right, left = (rank + 1) % n_ranks, (rank - 1) % n_ranks
    reduce = _reducer(op)
    tmp = torch.empty(max(sizes), dtype=flat.dtype, device=flat.device)
    for s in range(n_ranks - 1):
        out_chunk, in_chunk = chunk(rank - s - 1), chunk(rank - s - 2)
        # pipelined in segments: post every receive and send as one batch (NCCL needs a rank's sends and
        # receives grouped, or two ranks that each receive first wait forever), then reduce segment k
        # while k+1 arrives
        seg = max(SEGMENT_BYTES // flat.element_size(), 1)
        buf_all = tmp[:in_chunk.numel()]
        pieces = [(in_chunk[i:i + seg], buf_all[i:i + seg]) for i in range(0, in_chunk.numel(), seg)]
        recv_ops = [dist.P2POp(dist.irecv, buf, _global(group, left), group) for _, buf in pieces]
        send_ops = [dist.P2POp(dist.isend, out_chunk[i:i + seg], _global(group, right), group)
                    for i in range(0, out_chunk.numel(), seg)]
        requests = dist.batch_isend_irecv(recv_ops + send_ops) if recv_ops or send_ops else []
        works = [(work, dst, buf) for work, (dst, buf) in zip(requests[:len(recv_ops)], pieces)]
        sends = requests[len(recv_ops):]
        if counter is not None:
            counter.add(out_chunk.numel() * out_chunk.element_size())
        for work, dst, buf in works:
            work.wait()
            reduce(dst, buf)
        for work in sends:
            work.wait()
    if op == "avg":
        mine = chunk(rank)
        mine.div_(n_ranks) if mine.is_floating_point() else mine.floor_divide_(n_ranks)


def _ring_all_gather(flat, group, sizes, counter) -> None:
    """At step s rank r sends chunk (r-s) mod N right and receives chunk (r-s-1) mod N in place."""
    n_ranks, rank = _size(group), _rank(group)
    offsets = [sum(sizes[:i]) for i in range(n_ranks)]
    chunk = lambda i: flat[offsets[i % n_ranks]: offsets[i % n_ranks] + sizes[i % n_ranks]]  # noqa: E731
    right, left = (rank + 1) % n_ranks, (rank - 1) % n_ranks
    for s in range(n_ranks - 1):
        _exchange(group, chunk(rank - s), right, chunk(rank - s - 1), left, counter)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def _size(group) -> int:
    return dist.get_world_size(group) if dist.is_initialized() else 1


def _rank(group) -> int:
    return dist.get_rank(group) if dist.is_initialized() else 0


def _global(group, group_rank: int) -> int:
    return group_rank if group is None or group is dist.group.WORLD else dist.get_global_rank(group, group_rank)


def _exchange(group, send, to, recv, frm, counter) -> None:
    """Send `send` to group rank `to` while receiving into `recv` from `frm` (either may be None); wait.
    Both go in one batch_isend_irecv: on NCCL a rank's sends and receives must be posted together."""
    ops = []
    if recv is not None and recv.numel():
        ops.append(dist.P2POp(dist.irecv, recv, _global(group, frm), group))
    if send is not None and send.numel():
        ops.append(dist.P2POp(dist.isend, send, _global(group, to), group))
        if counter is not None:
            counter.add(send.numel() * send.element_size())
    for w in dist.batch_isend_irecv(ops) if ops else []:
        w.wait()


def _reducer(op: str):
    if op in ("sum", "avg"):
        return lambda acc, x: acc.add_(x) if acc.dtype != torch.bool else acc.logical_or_(x)
    if op == "max":
        return lambda acc, x: torch.maximum(acc, x, out=acc)
    if op == "min":
        return lambda acc, x: torch.minimum(acc, x, out=acc)
    raise ValueError(f"op must be one of {OPS}, got {op!r}")


def _flat(tensor: torch.Tensor):
    """A contiguous 1-D view of tensor, or a contiguous copy (returned second, copied back by _finish)."""
    if tensor.is_contiguous():
        return tensor.view(-1), None
    copy = tensor.contiguous().view(-1)
    return copy, copy


def _finish(tensor, flat, copy):
    if copy is not None:
        tensor.copy_(flat.view_as(tensor))
    return tensor


def _check_same(flat: torch.Tensor, group, name: str) -> None:
    """Pass (numel, dtype) around the ring; every rank raises if any two ranks disagree."""
    n_ranks = _size(group)
    if n_ranks == 1:
        return
    code = _DTYPES.index(flat.dtype) if flat.dtype in _DTYPES else len(_DTYPES)
    headers = torch.zeros(2 * n_ranks, dtype=torch.int64, device=flat.device)   # NCCL sends GPU tensors only
    headers[2 * _rank(group): 2 * _rank(group) + 2] = torch.tensor([flat.numel(), code], device=flat.device)
    _ring_all_gather(headers, group, [2] * n_ranks, None)
    pairs = headers.view(n_ranks, 2).tolist()
    if any(p != pairs[0] for p in pairs):
        seen = ", ".join(f"rank {i}: {n} x {_DTYPES[c] if c < len(_DTYPES) else 'other'}"
                         for i, (n, c) in enumerate(pairs))
        raise CollectiveMismatchError(f"{name}: ranks disagree on the tensor ({seen})")
