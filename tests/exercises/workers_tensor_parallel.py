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
        if case == 0:                                   # each shard's first and last token id
            targets[:4] = torch.tensor([0, vocab // 2 - 1, vocab // 2, vocab - 1])
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


def fg_worker(rank: int, world_size: int, impl: str) -> dict:
    """Exercises 4.6 and 4.7 on every rank: f and g alone, then the Megatron MLP, each pass recorded on the
    wire; the oracle (sums over ranks, the unsplit MLP) is computed here in one process."""
    import torch
    import torch.nn.functional as F
    from adapter import load
    from guard import guarded
    from recorders import wire_summary

    from llama_course.core import wire

    wire.install()
    exercise = guarded(load("tensor_parallel", impl), "tensor_parallel")

    def draw(seed, *shape):
        return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))

    out = {"error": ""}
    try:
        # f: identity forward, the sum of every rank's upstream gradient backward
        x = draw(1, 3, 4, 8).requires_grad_()
        with wire.recording() as fwd:
            y = exercise.copy_to_tp_region(x)
        with wire.recording() as bwd:
            (y * draw(10 + rank, 3, 4, 8)).sum().backward()
        want = sum(draw(10 + r, 3, 4, 8) for r in range(world_size))
        out["f"] = {"forward_same": bool(torch.equal(y.detach(), x.detach())),
                    "grad_diff": float((x.grad - want).abs().max()),
                    "forward": wire_summary(fwd), "backward": wire_summary(bwd)}
        # g: the sum forward, identity backward
        mine = draw(20 + rank, 3, 4, 8)
        xr = mine.clone().requires_grad_()
        c = draw(30, 3, 4, 8)
        with wire.recording() as fwd:
            y = exercise.reduce_from_tp_region(xr)
        with wire.recording() as bwd:
            (y * c).sum().backward()
        total = sum(draw(20 + r, 3, 4, 8) for r in range(world_size))
        out["g"] = {"forward_diff": float((y.detach() - total).abs().max()),
                    "input_kept": bool(torch.equal(xr.detach(), mine)),
                    "grad_diff": float((xr.grad - c).abs().max()),
                    "forward": wire_summary(fwd), "backward": wire_summary(bwd)}
        # the MLP: column-parallel w1, row-parallel w2
        w1, w2, xm, cm = draw(41, 16, 8), draw(42, 8, 16), draw(43, 2, 5, 8), draw(44, 2, 5, 8)
        ref = [t.clone().requires_grad_() for t in (xm, w1, w2)]
        y_ref = F.gelu(ref[0] @ ref[1].T) @ ref[2].T
        (y_ref * cm).sum().backward()
        x_mine = xm.clone().requires_grad_()
        s1 = w1.chunk(world_size, 0)[rank].clone().requires_grad_()
        s2 = w2.chunk(world_size, 1)[rank].clone().requires_grad_()
        with wire.recording() as fwd:
            y = exercise.tp_mlp(x_mine, s1, s2)
        with wire.recording() as bwd:
            (y * cm).sum().backward()
        out["mlp"] = {"y_diff": float((y.detach() - y_ref.detach()).abs().max()),
                      "x_grad_diff": float((x_mine.grad - ref[0].grad).abs().max()),
                      "w1_grad_diff": float((s1.grad - ref[1].grad.chunk(world_size, 0)[rank]).abs().max()),
                      "w2_grad_diff": float((s2.grad - ref[2].grad.chunk(world_size, 1)[rank]).abs().max()),
                      "bytes": y_ref.numel() * 4, "forward": wire_summary(fwd), "backward": wire_summary(bwd)}
    except Exception as e:  # noqa: BLE001 - the test reports it
        out["error"] = f"{type(e).__name__}: {e}"
    return out
