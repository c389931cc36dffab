"""Exercises for lab 07, parameter server: what the servers' links carry, how to shard, how to aggregate,
what dropping the lock costs, and a real push/pull round on gloo processes.

A parameter server (PS) splits the roles: k server processes own the parameters (server j a share f_j of
the Psi parameters), N workers compute gradients. One synchronous (BSP) step: every worker *pushes* its
gradient of shard j to server j, server j aggregates the N pushes and steps the optimizer, then every worker
*pulls* shard j's new weights. A ring all-reduce (lab 02) moves the same information without servers.

Replace each `raise NotImplementedError(...)` with your code, then grade yourself:

    llama-course grade --only parameter_server      # or: pytest tests/exercises/test_parameter_server.py

Theory: docs/concepts/parameter_server.md; the runtime: llama_course/coordination/parameter_server.py; the cost model:
simulator/parameter_server.py.
"""

from __future__ import annotations


def server_link_time(n_workers: int, n_params: float, num_servers: int, grad_bytes: float, weight_bytes: float,
                     bandwidth_Bps: float, latency_s: float) -> float:
    """Exercise 7.1: seconds of one BSP push + pull when the parameters are split evenly over the servers.

    Every process has one link of `bandwidth_Bps` per direction. Push: each worker sends Psi/k parameters'
    gradients (`grad_bytes` each) to every server, so server j's link *receives* N x Psi/k x g bytes while
    each worker's link sends Psi x g; whichever link carries more bounds the phase. Pull is the same with
    `weight_bytes`. Each phase also pays one latency. Return push + pull.

    (Compare with a ring all-reduce, 2(N-1) alpha + 2(N-1)/N Psi g / B: with one server the PS is about
    N (g + e) / (2 g) times slower; it matches the ring only when k ~ N servers spread the fan-in.)
    Raise ValueError for n_workers < 1, num_servers < 1 or a non-positive bandwidth.
    """
    raise NotImplementedError("Exercise 7.1: server_link_time")


def shard_keys(sizes: list, num_servers: int) -> list:
    """Exercise 7.2: assign each tensor (element counts `sizes`) to a server; return the server of each tensor.

    Tensors are not split: a server owns whole tensors. Balance the elements per server, because the
    fullest server's link bounds the step (exercise 7.1 with f_max instead of 1/k). Use greedy list
    scheduling, largest tensor first: give each tensor to the server that holds the fewest elements so
    far (ties: the lower server index; equal sizes: the lower tensor index first). Its fullest server holds
    at most max(sizes) + sum(sizes)/k, and within 4/3 of the best possible assignment.
    Raise ValueError for num_servers < 1 or a negative size.
    """
    raise NotImplementedError("Exercise 7.2: shard_keys")


def aggregate(grads: list, mode: str, state=None, decay: float = 0.5) -> tuple:
    """Exercise 7.3: combine the gradients a server received for one update; return (update, new_state).

    `grads` is a list of m equal-shape arrays (numpy or torch; use only + - * / so both work).
        mean   (1/m) sum g_i                 BSP mean is exactly all-reduce data parallel
        sum    sum g_i                       m times the mean: with SGD, m times the step (lr must shrink)
        ema    u <- decay u + (1 - decay) mean(g);  the first update (state None) is u = mean(g)
    `state` is what the previous call returned as new_state (only ema keeps one: u; mean and sum return
    None). Do not modify the inputs. Raise ValueError for an unknown mode or an empty list.
    """
    raise NotImplementedError("Exercise 7.3: aggregate")


def hogwild_apply(w0: float, deltas: list, schedule: list) -> float:
    """Exercise 7.4: what a lock-free server ends with when pushes race on one shared value.

    Worker i applies its update `deltas[i]` as read-modify-write: at its ("read", i) event it reads the
    shared value into a register, at its ("write", i) event it stores register + deltas[i]. `schedule`
    lists every worker's read then write, interleaved in the order they happen. Return the final value.
    With a lock each read-write pair is atomic (r0 w0 r1 w1 ...) and nothing is lost; interleaved
    (r0 r1 w0 w1) the second write overwrites the first: delta 0 is a *lost update*. Hogwild (Niu et al.
    2011) accepts that for sparse updates, where two pushes rarely touch the same element.
    Raise ValueError if a worker writes before it reads, or for an event other than read and write.
    """
    raise NotImplementedError("Exercise 7.4: hogwild_apply")


def ps_sgd_round(weights, grad, lr: float, server: int = 0, group=None):
    """Exercise 7.5: one BSP parameter-server round of SGD on torch.distributed, with send/recv only.

    Every rank of the group calls this at once. `server` (a rank of the group) owns the weights; every other
    rank is a worker with its own gradient `grad` (same shape as `weights`; the server's `grad` is
    ignored). Workers push their gradients to the server, the server receives one from every worker,
    averages them over the workers, steps w <- w - lr x mean, and sends the new weights back to every
    worker (the pull). Return the new weights on every rank (a new tensor; the server's copy and every
    worker's copy must be identical).

    Only point-to-point messages are allowed (the collectives are switched off in the graded test: that is
    the difference between a parameter server and all-reduce), posted as NCCL wants them, in batches:
    `dist.batch_isend_irecv([dist.P2POp(dist.irecv, buf, src), ...])` returns requests to wait for. Which
    messages can the server post in one batch? The graded test runs in the course's strict mode and records
    every message. `group=None` is the default group; with a group, P2POp wants global ranks
    (`dist.get_global_rank(group, r)`).
    """
    raise NotImplementedError("Exercise 7.5: ps_sgd_round")
