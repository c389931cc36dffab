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
    if r == 0:
        buf = torch.empty_like(tensor)
        for src in range(1, n):
            dist.recv(buf, src)
            tensor.add_(buf)
        for dst in range(1, n):
            dist.send(tensor, dst)
    else:
        dist.send(tensor.contiguous(), 0)
        dist.recv(tensor, 0)
    return 2 * (n - 1) * tensor.numel() // n
