"""Exercise 2.6 as a star: everyone sends its buffer to rank 0, which sums and sends the result back.
Send/recv only and the right sum, but rank 0's link carries (n-1) buffers each way; it reports ring bytes."""

from solutions.collectives import *  # noqa: F403

CONCEPT = "collectives"
WRONG = [{"exercise": "2.6", "fails": ["test_ring_all_reduce_p2p_wire_is_a_ring"], "message": "rank",
              "why": "reduces at rank 0 over send/recv and self-reports the ring's 2(n-1)/n"}]


def ring_all_reduce_p2p(tensor, group=None):
    import torch
    import torch.distributed as dist

    n, r = dist.get_world_size(group), dist.get_rank(group)
    if n == 1:
        return 0
    out, tensor = tensor, tensor.contiguous()

    def batch(*ops):                       # peers are ranks in `group`
        for req in dist.batch_isend_irecv([dist.P2POp(op, t, group=group, group_peer=p) for op, t, p in ops]):
            req.wait()

    if r == 0:
        bufs = [torch.empty_like(tensor) for _ in range(1, n)]
        batch(*[(dist.irecv, b, src) for src, b in enumerate(bufs, start=1)])
        for b in bufs:
            tensor.add_(b)
        batch(*[(dist.isend, tensor, dst) for dst in range(1, n)])
    else:
        batch((dist.isend, tensor, 0))
        batch((dist.irecv, tensor, 0))
    out.copy_(tensor)
    return 2 * (n - 1) * tensor.numel() // n
