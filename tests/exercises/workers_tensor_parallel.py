"""Worker for the graded tensor-parallel exercise 4.5 (spawned by llama_course.core.testing.spawn).

Every rank draws the same full logits and targets, keeps its vocabulary shard, and calls the student's
`vocab_parallel_cross_entropy` with the collectives that would gather logits disabled; the oracle is
torch's cross-entropy and autograd on the full logits.
"""

from __future__ import annotations


def vocab_ce_worker(rank: int, world_size: int, impl: str) -> list:
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from adapter import load
    from guard import guarded
    from recorders import wire_summary

    from llama_course.core import wire

    wire.install()
    exercise = guarded(load("tensor_parallel", impl), "tensor_parallel")

    def forbidden(*args, **kwargs):
        raise RuntimeError("exercise 4.5 must not gather the logits")

    for name in ("all_gather", "all_gather_into_tensor", "gather", "all_gather_object", "broadcast", "all_to_all"):
        setattr(dist, name, forbidden)
    out = []
    for case, (n, vocab, scale) in enumerate([(6, 16, 1.0), (10, 32, 30.0), (3, 8, 1e-3)]):
        g = torch.Generator().manual_seed(100 + case)
        full = torch.randn(n, vocab, generator=g) * scale
        if case == 1:
            full[:, 0] += 80.0                          # a large logit on rank 0 only: needs the max
        targets = torch.randint(0, vocab, (n,), generator=g)
        if case == 2:
            targets[:] = vocab - 1                      # every target on the last rank
        shard = full.chunk(world_size, 1)[rank].clone()
        start = rank * (vocab // world_size)
        with wire.recording() as log:
            loss, grad = exercise.vocab_parallel_cross_entropy(shard, targets, start, None)
        ref = full.clone().requires_grad_()
        ref_loss = F.cross_entropy(ref, targets, reduction="none")
        ref_loss.mean().backward()
        ref_grad = ref.grad.chunk(world_size, 1)[rank]
        out.append({"loss_diff": float((torch.as_tensor(loss).float() - ref_loss.detach()).abs().max()),
                    "grad_diff": float((torch.as_tensor(grad).float() - ref_grad).abs().max()),
                    "finite": bool(torch.isfinite(torch.as_tensor(loss)).all()), "n": n, "vocab": vocab,
                    "wire": wire_summary(log)})
    return out
