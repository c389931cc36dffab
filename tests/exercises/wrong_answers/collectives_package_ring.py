"""Exercise 2.6 handed in as a call to the course's own ring all-reduce (send/recv only, right values)."""

from llama_course.parallel import collectives as _course
from solutions.collectives import *  # noqa: F403

CONCEPT = "collectives"
WRONG = [{"exercise": "2.6", "fails": ["test_ring_all_reduce_p2p_matches_torch", "test_ring_all_reduce_p2p_wire_is_a_ring"],
              "message": "LeakError", "why": "imports llama_course.parallel.collectives.ring_all_reduce"}]


def ring_all_reduce_p2p(tensor, group=None):
    import torch.distributed as dist

    from llama_course.core import wire

    n = dist.get_world_size(group)
    wire.set_strict(False)                # isolate the leak: the package's ring may predate batched p2p
    try:
        _course.ring_all_reduce(tensor, group=group, check=False)
    finally:
        wire.set_strict(True)
    return 2 * (n - 1) * tensor.numel() // n
