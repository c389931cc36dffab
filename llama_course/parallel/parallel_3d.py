"""3-D parallelism: data x tensor x pipeline parallel on one grid of ranks.

Ranks form a (pp, dp, tp) grid with tp fastest (distributed.py): a tensor-parallel group is t neighbouring
ranks (one node, NVLink), a data-parallel group strides by t, a pipeline by d t (across nodes).

    dp=2, tp=2, pp=2 (8 ranks):    stage 0: [0 1] [2 3]    stage 1: [4 5] [6 7]
                                           tp    tp                 tp    tp
    dp groups {0,2} {1,3} {4,6} {5,7}     pp groups {0,4} {1,5} {2,6} {3,7}

One step: each dp replica (a whole pipeline of tp-split stages) runs the pipeline schedule on its share of
the global batch (pipeline_parallel.py; inside every stage the Megatron layers of tensor_parallel.py), then
the gradients are averaged over the dp group, one all-reduce of each rank's 1/(t p) of the parameters:

    per step and rank   compute  6 N B s / (d t p)              (+ the pipeline bubble (p-1)/(m+p-1))
                        tp       4 l/p all-reduces of b s h per micro-batch  (critical path, intra-node)
                        pp       2 m e b s h sends per stage boundary          (cheap, inter-node)
                        dp       2 (d-1)/d x 2-4 bytes x N / (t p)             (overlappable)
    memory per rank     weights + grads + optimizer of N / (t p); activations of the micro-batches in flight

Seed question 22 (how to choose the degrees): t up to the GPUs of a node (tp's all-reduces must ride
NVLink), p as small as lets the model fit with t (each stage adds bubble), d takes the rest
(dp = num_gpus / (t p)) and the global batch fixes m = B / (d b). `llama-course plan` searches this with
the simulator; this module is the real thing it predicts.

There is no separate algorithm here: a 3-D engine is the composition of pieces (engine.py), and this
module says in which order the model is cut: tensor parallelism first (every block split over tp),
context parallelism's attention on the split heads (context_parallel.py: the cp ranks are replicas that
each hold chunks of every sequence), activation checkpointing on the split blocks, then the pipeline cut
of the split model into stages.
The schedule runs the pipeline (pipeline_parallel.py) and the gradient sync reduces each rank's part
over its dp group (data_parallel.py: bucketed, ZeRO-1/2, compressed; or torch's FSDP2 on a (dp, tp) mesh).

    llama-course train configs/tiny.yaml --set cluster.num_gpus=8 parallel.tp=2 parallel.pp=2 \\
        parallel.global_batch_size=8 parallel.micro_batch_size=1
    llama-course train configs/tiny.yaml --set cluster.num_gpus=4 parallel.tp=2 parallel.zero_stage=1
"""

from __future__ import annotations

from llama_course.parallel.activation_checkpointing import ActivationCheckpointing
from llama_course.parallel.context_parallel import ContextParallel
from llama_course.parallel.expert_parallel import ExpertParallel
from llama_course.parallel.pipeline_parallel import PipelineSplit
from llama_course.parallel.tensor_parallel import TensorParallel, TorchTensorParallel


def model_transforms(cfg, ctx) -> list:
    """The model transforms of dp x cp x tp x pp (x ep), in the order they apply: tp shards, context-parallel
    attention (on the tp rank's heads), the ep rank's experts (expert_parallel.py), checkpointed blocks,
    stages."""
    p = cfg.parallel
    out = []
    if p.tp > 1:
        out.append(TensorParallel(ctx, p.sequence_parallel) if p.implementation == "course"
                   else TorchTensorParallel(ctx, p.sequence_parallel))
    if p.cp > 1:
        out.append(ContextParallel(ctx))
    if p.ep > 1:
        out.append(ExpertParallel(cfg, ctx))
    if p.activation_checkpointing != "none":
        out.append(ActivationCheckpointing(p.activation_checkpointing))
    if p.pp > 1:
        out.append(PipelineSplit(cfg, ctx))
    return out
