"""What this process puts on the wire, and NCCL's rules enforced on gloo (strict mode).

**The recorder.** `install()` wraps torch.distributed's module-level collectives and point-to-point calls
(and torch.distributed.rpc's `rpc_sync`, `rpc_async`, `remote`) once per process; `init_distributed` calls
it. Inside `with recording() as log:` every call this process makes, from any thread, is appended to
`log.calls` as a `WireCall` (kind, op, dtype, bytes handed to the call, group size, peer):

    with wire.recording() as log:
        engine.train_step(batches, lr)
    log.bytes_by_kind()      # {"all_reduce": 4 n, "send": 0, ..., "rpc": 0}: bytes this rank handed over

Bytes are what the rank hands to the call (all_reduce: the tensor; reduce_scatter: its input; all_gather:
its local input; send/recv: the buffer; rpc: the tensors among the arguments), not what the backend's
algorithm moves: a ring all-reduce of n bytes sends 2(N-1)/N n over the links. The course's own ring
collectives are point-to-point underneath, so they show up as `send` and `recv` of their chunks.

What it cannot see (checked in torch 2.13's source): calls that skip the Python functions. DDP's reducer
all-reduces buckets in C++ (`watch_ddp(model)` swaps in PyTorch's Python all-reduce hook, which goes
through `dist.all_reduce` and is recorded; DDP's one broadcast of the weights at construction stays
unseen); DTensor and functional collectives (tensor parallelism with `implementation: torch`) call
`torch.ops._c10d_functional` directly (torch's CommDebugMode counts those); RRef methods and RPC replies.
FSDP2 is seen: it calls `dist.all_gather_single` and `dist.reduce_scatter_single` (and `dist.all_reduce`
for HSDP) through the module. `reduce`, `gather`, `scatter` and `barrier` are not recorded (none of the
course's engines uses them for training traffic).

**Strict mode** (`LLAMA_COURSE_STRICT=1`, set for every test process by tests/conftest.py, or
`set_strict(True)`) makes gloo fail where NCCL would hang or misbehave:

1. an unbatched `send`, `recv`, `isend` or `irecv` raises: on NCCL a rank's point-to-point operations to
   one peer run in order on one stream, so two ranks that each receive before they send wait forever;
   post sends and receives together with `batch_isend_irecv`, as Megatron-LM does;
2. a `batch_isend_irecv` completes only once every peer has posted the matching operations (NCCL's
   rendezvous, emulated in core/wire_rendezvous.py): each batch announces its operations in the
   rendezvous store and waits for the peer's counterparts, which must agree in size, dtype and tag, in
   order (NCCL ignores tags and matches messages between two ranks in the order they were posted). A disagreement, or two ranks each waiting for the
   other, fails at once with an error naming the peer; a peer that never posts fails at the timeout;
3. a tensor handed to a collective on another device than the engine's raises (`set_device`, called by
   `init_distributed`), and RPC arguments must be CPU tensors (stage them through CPU: no device maps).

Strict mode asks at least what NCCL asks (a batch here blocks the caller until its peers have posted;
NCCL only blocks its stream). Calls made inside PyTorch's own libraries (pipelining's one-sided sends,
object collectives) are trusted as NCCL-tested upstream: they are recorded and device-checked only.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from llama_course.core.wire_rendezvous import StrictModeError, forget_group, strict_batch

__all__ = ["KINDS", "WireCall", "WireLog", "StrictModeError", "install", "recording", "strict_enabled", "set_strict",
           "set_device", "watch_ddp"]

KINDS = ("all_reduce", "reduce_scatter", "all_gather", "broadcast", "send", "recv", "all_to_all", "rpc")


@dataclass(frozen=True)
class WireCall:
    """One call this process made."""

    kind: str
    """One of KINDS."""
    op: str
    """The torch function called, e.g. "reduce_scatter_tensor", "isend", "batch_isend_irecv"."""
    dtype: str
    """e.g. "torch.float32" (the first tensor's)."""
    nbytes: int
    """Bytes this rank handed to the call (see the module docstring)."""
    group_size: int
    """Ranks in the call's group (rpc: 2, the caller and the callee)."""
    peer: int | None
    """Global rank of the peer of a send or recv; None otherwise."""


@dataclass
class WireLog:
    """The calls of one `recording()` block, in call order."""

    calls: list = field(default_factory=list)

    def bytes_by_kind(self) -> dict:
        """Every kind of KINDS as a key, with the bytes of its calls (0 where none)."""
        out = dict.fromkeys(KINDS, 0)
        for c in list(self.calls):
            out[c.kind] += c.nbytes
        return out

    def clear(self) -> None:
        self.calls.clear()


# ---------------------------------------------------------------------------------------------
# switches
# ---------------------------------------------------------------------------------------------

_STRICT: bool | None = None          # None: follow LLAMA_COURSE_STRICT
_DEVICE: torch.device | None = None  # the engine's device; None: not checked


def strict_enabled() -> bool:
    """LLAMA_COURSE_STRICT=1 in the environment, or set_strict(True) (set_strict(False) overrides)."""
    return _STRICT if _STRICT is not None else os.environ.get("LLAMA_COURSE_STRICT", "0") == "1"


def set_strict(on: bool, device=None) -> None:
    """Switch strict mode on or off in this process; `device`: the engine's device (see set_device)."""
    global _STRICT
    _STRICT = bool(on)
    if device is not None:
        set_device(device)


def set_device(device) -> None:
    """The device every tensor handed to a collective must sit on in strict mode (None: unchecked)."""
    global _DEVICE
    _DEVICE = torch.device(device) if device is not None else None


# ---------------------------------------------------------------------------------------------
# what each wrapped function hands over
# ---------------------------------------------------------------------------------------------

def _nbytes(t) -> int:
    if isinstance(t, torch.Tensor):
        return t.numel() * t.element_size()
    if isinstance(t, (list, tuple)):
        return sum(_nbytes(x) for x in t)
    if isinstance(t, dict):
        return sum(_nbytes(x) for x in t.values())
    return 0


def _tensors(t) -> list:
    if isinstance(t, torch.Tensor):
        return [t]
    if isinstance(t, (list, tuple)):
        return [y for x in t for y in _tensors(x)]
    if isinstance(t, dict):
        return [y for x in t.values() for y in _tensors(x)]
    return []


# torch function -> (kind, the argument whose bytes count, arguments whose tensors are device-checked)
_COLLECTIVES = {
    "all_reduce": ("all_reduce", "tensor", ("tensor",)),
    "all_reduce_coalesced": ("all_reduce", "tensors", ("tensors",)),
    "reduce_scatter": ("reduce_scatter", "input_list", ("output", "input_list")),
    "reduce_scatter_tensor": ("reduce_scatter", "input", ("output", "input")),
    "reduce_scatter_single": ("reduce_scatter", "input", ("output", "input")),
    "_reduce_scatter_base": ("reduce_scatter", "input", ("output", "input")),
    "all_gather": ("all_gather", "tensor", ("tensor_list", "tensor")),
    "all_gather_into_tensor": ("all_gather", "input_tensor", ("output_tensor", "input_tensor")),
    "all_gather_single": ("all_gather", "input_tensor", ("output_tensor", "input_tensor")),
    "_all_gather_base": ("all_gather", "input_tensor", ("output_tensor", "input_tensor")),
    "all_gather_coalesced": ("all_gather", "input_tensor_list", ("output_tensor_lists", "input_tensor_list")),
    "broadcast": ("broadcast", "tensor", ("tensor",)),
    "all_to_all": ("all_to_all", "input_tensor_list", ("output_tensor_list", "input_tensor_list")),
    "all_to_all_single": ("all_to_all", "input", ("output", "input")),
}
_P2P = {"send": "send", "isend": "send", "recv": "recv", "irecv": "recv"}
_RPC = ("rpc_sync", "rpc_async", "remote")

_ORIGINAL: dict = {}                 # name -> the unwrapped torch function
_ACTIVE: list = []                   # WireLogs being recorded
_LOCK = threading.Lock()
_LOCAL = threading.local()           # depth: > 0 inside a wrapped call (its inner calls pass through)


def _group_size(group) -> int:
    try:
        return dist.get_world_size(group)
    except Exception:              # noqa: BLE001  (not a member of the group: torch returns early)
        return 0


def _global_peer(args: dict, name: str):
    """Global rank of a send/recv's peer from dst/src or group_dst/group_src."""
    key = "dst" if _P2P[name] == "send" else "src"
    if args.get(key) is not None:
        return int(args[key])
    if args.get(f"group_{key}") is not None:
        return dist.get_global_rank(args.get("group") or dist.group.WORLD, args[f"group_{key}"])
    return None


def _record(call: WireCall) -> None:
    with _LOCK:
        for log in _ACTIVE:
            log.calls.append(call)


def _dtype_of(tensors: list) -> str:
    return str(tensors[0].dtype) if tensors else ""


def _trusted(frame) -> bool:
    """A call made inside PyTorch's own libraries (not the course's code)."""
    return frame is not None and str(frame.f_globals.get("__name__", "")).startswith("torch.")


def _check_device(op: str, tensors: list) -> None:
    if _DEVICE is None:
        return
    for t in tensors:
        if t.device != _DEVICE and not (t.device.type == _DEVICE.type and _DEVICE.index is None):
            raise StrictModeError(f"strict mode (NCCL rule: tensors of a collective sit on the engine's device): "
                                  f"{op} got a tensor on {t.device}, the engine's device is {_DEVICE}")


def _wrap_distributed(name: str, fn):
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if getattr(_LOCAL, "depth", 0) or not (_ACTIVE or strict_enabled()):
            return fn(*args, **kwargs)
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        a = bound.arguments
        strict = strict_enabled()
        caller = sys._getframe(1)
        if name == "batch_isend_irecv":
            ops = list(a["p2p_op_list"])
            size = _group_size(ops[0].group) if ops else 0
            for o in ops:
                kind = "send" if o.op in (_ORIGINAL.get("isend"), dist.isend) else "recv"
                _record(WireCall(kind, name, str(o.tensor.dtype), _nbytes(o.tensor), size, int(o.peer)))
            if strict:
                _check_device(name, [o.tensor for o in ops])
                if ops and not _trusted(caller) and dist.get_backend(ops[0].group) != "nccl":
                    return strict_batch(ops, _ORIGINAL["isend"], _ORIGINAL["irecv"])   # NCCL's: the real one
        elif name in _P2P:
            peer = _global_peer(a, name)
            tensor = a["tensor"]
            _record(WireCall(_P2P[name], name, str(tensor.dtype), _nbytes(tensor), _group_size(a.get("group")), peer))
            if strict:
                _check_device(name, [tensor])
                if not _trusted(caller):
                    raise StrictModeError(
                        f"strict mode (NCCL rule: post point-to-point messages in batches): unbatched {name} "
                        f"{'to' if _P2P[name] == 'send' else 'from'} rank {peer}; on NCCL two ranks that each "
                        "receive before they send wait forever: use dist.batch_isend_irecv([P2POp(...), ...])")
        else:
            kind, counted, checked = _COLLECTIVES[name]
            tensors = [t for arg in checked for t in _tensors(a.get(arg))]
            _record(WireCall(kind, name, _dtype_of(_tensors(a.get(counted))), _nbytes(a.get(counted)),
                             _group_size(a.get("group")), None))
            if strict:
                _check_device(name, tensors)
        _LOCAL.depth = 1
        try:
            return fn(*args, **kwargs)
        finally:
            _LOCAL.depth = 0

    wrapper.__llama_course_wire__ = True
    return wrapper


def _wrap_rpc(name: str, fn):
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not (_ACTIVE or strict_enabled()):
            return fn(*args, **kwargs)
        bound = signature.bind(*args, **kwargs)
        tensors = _tensors(bound.arguments.get("args")) + _tensors(bound.arguments.get("kwargs"))
        _record(WireCall("rpc", name, _dtype_of(tensors), sum(_nbytes(t) for t in tensors), 2, None))
        if strict_enabled():
            off = [t for t in tensors if t.device.type != "cpu"]
            if off:
                raise StrictModeError(f"strict mode (RPC stages tensors through CPU): {name} got a tensor on "
                                      f"{off[0].device}; copy it with .cpu() before the call (no device maps)")
        return fn(*args, **kwargs)

    wrapper.__llama_course_wire__ = True
    return wrapper


def install() -> None:
    """Wrap torch.distributed's functions (and rpc's) in this process; calling it again does nothing."""
    c10d = dist.distributed_c10d
    for name in list(_COLLECTIVES) + list(_P2P) + ["batch_isend_irecv"]:
        fn = getattr(c10d, name, None)
        if fn is None or getattr(fn, "__llama_course_wire__", False):
            continue
        _ORIGINAL[name] = fn
        wrapped = _wrap_distributed(name, fn)
        setattr(c10d, name, wrapped)                # P2POp checks `op in [isend, irecv]` against these
        setattr(dist, name, wrapped)
    destroy = c10d.destroy_process_group
    if not getattr(destroy, "__llama_course_wire__", False):
        @functools.wraps(destroy)
        def destroy_process_group(group=None):
            """Forget strict mode's matching state of the group (of every group with the default one)."""
            forget_group(None if group is None or group is dist.group.WORLD else group.group_name)
            return destroy(group)

        destroy_process_group.__llama_course_wire__ = True
        c10d.destroy_process_group = dist.destroy_process_group = destroy_process_group
    try:
        import torch.distributed.rpc as rpc
        import torch.distributed.rpc.api as rpc_api
    except ImportError:                             # a torch built without RPC
        return
    for name in _RPC:
        fn = getattr(rpc_api, name)
        if getattr(fn, "__llama_course_wire__", False):
            continue
        wrapped = _wrap_rpc(name, fn)
        setattr(rpc_api, name, wrapped)
        setattr(rpc, name, wrapped)


@contextmanager
def recording():
    """A WireLog of every call this process makes (any thread) inside the block."""
    install()
    log = WireLog()
    with _LOCK:
        _ACTIVE.append(log)
    try:
        yield log
    finally:
        with _LOCK:
            _ACTIVE.remove(log)


def watch_ddp(model) -> None:
    """Let the recorder see a DistributedDataParallel model's gradient all-reduces: register PyTorch's
    Python all-reduce comm hook (same arithmetic as the C++ default: divide by N, sum), which calls
    `dist.all_reduce` once per bucket."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    model.register_comm_hook(model.process_group, allreduce_hook)
