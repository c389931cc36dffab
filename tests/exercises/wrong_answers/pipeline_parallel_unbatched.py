"""1F1B on isend/recv outside any batch (the course's reference before strict mode): right gradients on
gloo, but NCCL serialises a rank's messages to one peer, and strict mode refuses unbatched point-to-point."""

import solutions.pipeline_parallel as _reference
from solutions.pipeline_parallel import *  # noqa: F403

CONCEPT = "pipeline_parallel"
WRONG = [{"exercise": "5.5", "fails": ["test_pipeline_step_messages_on_the_wire"], "message": "StrictModeError",
          "why": "unbatched isend/recv"}]


def pipeline_step(stage, inputs, targets, rank, world_size, loss_fn, shape):
    import torch
    import torch.distributed as dist

    m = len(inputs)
    first, last = rank == 0, rank == world_size - 1
    held_in, held_out, pending = {}, {}, []
    total = 0.0
    for kind, i in _reference.one_f_one_b_order(world_size, m, rank):
        if kind == "F":
            if first:
                x = inputs[i]
            else:
                x = torch.empty(shape)
                dist.recv(x, src=rank - 1)
                x.requires_grad_()
            out = stage(x)
            if last:
                out = loss_fn(out, targets[i]) / m
                total += float(out) * m
            else:
                msg = out.detach().contiguous()
                pending.append((dist.isend(msg, dst=rank + 1), msg))
            held_in[i], held_out[i] = x, out
        else:
            x, out = held_in.pop(i), held_out.pop(i)
            if last:
                out.backward()
            else:
                grad = torch.empty(shape)
                dist.recv(grad, src=rank + 1)
                out.backward(grad)
            if not first:
                msg = x.grad.contiguous()
                pending.append((dist.isend(msg, dst=rank - 1), msg))
    for work, _ in pending:
        work.wait()
    return total
