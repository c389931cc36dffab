"""Model compression: quantization error bounds and int4 packing, unstructured sparsity equal to the target
and kept during fine-tuning, structured pruning that shrinks shapes and FLOPs and equals the masked dense
model, the distillation loss against its closed form, bad input refused in one line (exit 2), and a
tiny trained checkpoint through compress -> eval -> generate -> train (init_from)."""

import copy
import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from llama_course.commands.cli import main
from llama_course.compression.distillation import distillation_loss
from llama_course.compression.model_compression import compress, count_weights, parse_options
from llama_course.compression.pruning import (
    apply_masks,
    block_sparsity,
    forward_flops_per_token,
    magnitude_masks,
    prunable,
    shrink,
    structured_masks,
    structured_plan,
)
from llama_course.core import checkpoint as ckpt
from llama_course.core import quantization as Q
from llama_course.core.model import Transformer, model_from_state
from simulator.config import ConfigError, load_config
from simulator.workload import forward_flops_per_token as workload_flops

TINY = "configs/tiny.yaml"
FAST = ["cluster.num_gpus=1", "parallel.global_batch_size=4", "parallel.micro_batch_size=4", "seq_len=32",
        "training.eval_every=0", "training.eval_batches=1", "training.warmup_steps=2"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matmuls: one thread is ~20x faster than several on a shared 2-core machine (no oversubscription)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(seed=0, **model):
    cfg = load_config({"model": {"preset": "tiny", **model}, "seq_len": 32})
    torch.manual_seed(seed)
    return Transformer(cfg.model, max_seq_len=32), cfg


# ---- quantization ------------------------------------------------------------------------------

def test_int8_per_channel_error_is_at_most_half_a_step():
    w = torch.randn(48, 64) * torch.logspace(-3, 0, 48)[:, None]        # rows of very different scales
    q, scale = Q.quantize(w, 8)
    assert q.dtype == torch.int8 and scale.shape == (48, 1) and scale.dtype == torch.float16
    assert q.abs().max() <= 127 and (q.abs().amax(1) >= 126).all()     # each row's largest weight maps to ~127
    err = (w - Q.dequantize(q, scale)).abs()
    assert (err <= scale.float() / 2 + 1e-7).all()


def test_int4_groups_pack_two_per_byte_and_round_trip():
    q = torch.randint(-8, 8, (5, 64), dtype=torch.int8)
    packed = Q.pack_int4(q)
    assert packed.dtype == torch.uint8 and packed.shape == (5, 32)
    assert torch.equal(Q.unpack_int4(packed), q)
    w = torch.randn(8, 64)
    q4, scale = Q.quantize(w, 4, group_size=16)
    assert scale.shape == (8, 4) and q4.abs().max() <= 7
    err = (w - Q.dequantize(q4, scale)).abs().view(8, 4, 16)
    assert (err <= scale.float().unsqueeze(-1) / 2 + 1e-6).all()
    with pytest.raises(ValueError, match="does not divide"):
        Q.quantize(w, 4, group_size=48)


@pytest.mark.parametrize("bits,group,stored", [(8, None, 1.0), (4, 32, 0.5)])
def test_quant_linear_dequantizes_on_the_fly_and_stores_fewer_bytes(bits, group, stored):
    lin = torch.nn.Linear(64, 96, bias=False)
    ql = Q.QuantLinear.from_linear(lin, bits, group)
    x = torch.randn(3, 64)
    assert torch.allclose(ql(x), F.linear(x, ql.dequantized()))
    assert ql.qweight.numel() * ql.qweight.element_size() == 96 * 64 * stored
    assert (ql(x) - lin(x)).abs().max() < (0.02 if bits == 8 else 0.3)
    model, _ = tiny_model()
    names = Q.quantize_model(model, bits, group)
    assert "tok_embeddings" in names and "output" in names and "layers.0.attention.wq" in names
    assert count_weights(model) == sum(p.numel() for p in Transformer(model.cfg, 32).parameters())


# ---- pruning -----------------------------------------------------------------------------------

@pytest.mark.parametrize("scope", ["layer", "global"])
def test_unstructured_sparsity_equals_the_target_and_drops_the_smallest(scope):
    model, _ = tiny_model()
    apply_masks(model, magnitude_masks(model, 0.3, scope))
    weights = prunable(model)
    n = sum(w.numel() for w in weights.values())
    assert block_sparsity(model) == pytest.approx(0.3, abs=1.5 / n * len(weights))
    if scope == "layer":
        assert all(int((w == 0).sum()) == round(0.3 * w.numel()) for w in weights.values())
    assert model.tok_embeddings.weight.ne(0).all()                          # embeddings and head never pruned


def test_pruned_weights_stay_zero_while_fine_tuning():
    model, _ = tiny_model()
    masks = magnitude_masks(model, 0.5)
    apply_masks(model, masks)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        x = torch.randint(0, 512, (2, 16))
        F.cross_entropy(model(x).flatten(0, 1), x.flatten()).backward()
        opt.step()
        opt.zero_grad()
    assert all(torch.equal(w == 0, ~masks[n]) for n, w in prunable(model).items())


@pytest.mark.parametrize("model_fields", [{}, {"n_kv_heads": 4}])          # GQA 4:2, and MHA (whole groups)
def test_structured_pruning_shrinks_matmuls_and_equals_the_masked_dense_model(model_fields):
    model, cfg = tiny_model(**model_fields)
    dense = copy.deepcopy(model)
    plan = structured_plan(model, 0.5)
    structured_masks(dense, plan)
    shapes = shrink(model, plan)
    att, ffn = model.layers[0].attention, model.layers[0].feed_forward
    assert att.wq.weight.shape == (2 * 16, 64) and att.wo.weight.shape == (64, 2 * 16)
    assert ffn.w1.weight.shape == ffn.w3.weight.shape == (96, 64) and ffn.w2.weight.shape == (64, 96)
    assert att.wk.weight.shape == (2 * 16, 64)        # GQA: both k/v heads kept; MHA: 2 of 4 groups, k/v with them
    assert shapes == [{"n_heads": 2, "n_kv_heads": 2, "ffn_dim": 96}] * 4
    x = torch.randint(0, 512, (2, 32))
    assert torch.allclose(model(x), dense(x), atol=1e-5)
    # FLOPs: the dense count equals the simulator's; each layer loses half its MLP and query/output heads
    full = Transformer(cfg.model, 32)
    assert forward_flops_per_token(full, 32) == workload_flops(cfg.model, 32)
    d, hd = 64, 16
    removed_per_layer = 2 * 3 * d * 96 + 2 * 2 * d * 2 * hd + 4 * 32 * 2 * hd
    if model_fields:                                                          # MHA: k and v of 2 heads too
        removed_per_layer += 2 * 2 * d * 2 * hd
    assert forward_flops_per_token(model, 32) == forward_flops_per_token(full, 32) - 4 * removed_per_layer
    # the checkpoint's tensors alone rebuild the pruned model
    rebuilt = model_from_state(cfg, model.state_dict())
    rebuilt.load_state_dict(model.state_dict())
    assert torch.allclose(rebuilt(x), model(x))


# ---- distillation ------------------------------------------------------------------------------

def test_distillation_loss_is_t2_kl_plus_hard_label_ce():
    torch.manual_seed(0)
    s, t, y = torch.randn(2, 5, 11), torch.randn(2, 5, 11), torch.randint(0, 11, (2, 5))
    T, alpha = 3.0, 0.7
    p_t, log_p_s = (t / T).softmax(-1), (s / T).log_softmax(-1)
    kl = (p_t * (p_t.log() - log_p_s)).sum(-1).mean()
    ce = F.cross_entropy(s.flatten(0, 1), y.flatten())
    assert distillation_loss(s, t, y, T, alpha) == pytest.approx(float(alpha * T * T * kl + (1 - alpha) * ce), rel=1e-5)
    assert distillation_loss(s, t, y, T, 0.0) == pytest.approx(float(ce), rel=1e-6)
    assert distillation_loss(t, t, y, T, 1.0) == pytest.approx(0.0, abs=1e-6)


# ---- options and the command line --------------------------------------------------------------

@pytest.mark.parametrize("method,items,message", [
    ("prune", ["sparsity=1.0"], "sparsity: expected a number in [0, 1), got 1.0"),
    ("prune", ["sparsity=-0.1"], "sparsity: expected a number in [0, 1)"),
    ("prune", ["sparsitty=0.5"], "--set sparsitty: not an option of --method prune"),
    ("prune", ["structured=yes please"], "structured: expected true or false"),
    ("int4", ["group_size=0"], "group_size: expected an integer > 0"),
    ("distill", ["alpha=2"], "alpha: expected a number in [0, 1]"),
    ("distill", ["temperature=0"], "temperature: expected a number > 0"),
])
def test_bad_options_are_one_line_errors(method, items, message):
    with pytest.raises(ConfigError) as e:
        parse_options(method, items)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from llama_course.trainer import run_worker

    root = tmp_path_factory.mktemp("compression")
    run_worker(load_config(TINY, FAST + ["training.steps=6"]), checkpoint_dir=str(root / "teacher"), quiet=True)
    return root


def test_bad_input_exits_2_with_one_line(trained, capsys):
    teacher, out = str(trained / "teacher"), str(trained / "bad")
    for extra, message in ((["--method", "int4", "--set", "group_size=48"],
                            "error: group_size: 48 does not divide the input dimension 64 of tok_embeddings"),
                           (["--method", "prune", "--set", "sparsity=1.5"], "error: sparsity: expected a number in [0, 1)")):
        assert main(["compress", teacher, "--out", out, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(message) and "\n" not in err
    assert main(["compress", str(trained / "missing"), "--method", "int8", "--out", out]) == 2
    assert not os.path.exists(out)
    os.makedirs(out)
    open(os.path.join(out, "notes.txt"), "w").close()                  # never replace a folder of other files
    assert main(["compress", teacher, "--method", "int8", "--out", out]) == 2
    assert "is not a checkpoint folder" in capsys.readouterr().err and os.path.exists(os.path.join(out, "notes.txt"))


def measure(path):
    """What `eval --json` reports, with the loss on two validation batches only (the test's time budget)."""
    from llama_course.compression.pruning import block_sparsity, forward_flops_per_token
    from llama_course.core.checkpoint import load_model
    from llama_course.core.evaluate import evaluate_model, tensor_bytes

    model, cfg, _ = load_model(str(path))
    folder = ckpt.resolve_path(str(path))
    state = torch.load(os.path.join(folder, "model.pt"), weights_only=True)
    return {"val_loss": evaluate_model(model, cfg, batches=2), "n_params": count_weights(model),
            "params_bytes": tensor_bytes(state), "sparsity": block_sparsity(model),
            "forward_flops_per_token": forward_flops_per_token(model, cfg.seq_len)}


def test_compress_eval_generate_train_round_trip(trained, capsys):
    from llama_course.commands.eval import evaluate_checkpoint
    from llama_course.trainer import run_worker

    teacher = evaluate_checkpoint(str(trained / "teacher"))
    assert teacher["sparsity"] == 0 and teacher["n_params"] == 262_720
    outs = {"int8": [], "int4": ["group_size=32"], "prune": ["sparsity=0.5", "finetune_steps=2", "batch_size=4"],
            "structured": ["sparsity=0.5", "structured=true"], "distill": ["steps=2", "batch_size=4"]}
    for name, opts in outs.items():
        method = "prune" if name == "structured" else name
        argv = ["compress", str(trained / "teacher"), "--method", method, "--out", str(trained / name)]
        assert main(argv + [x for o in opts for x in ("--set", o)]) == 0
    proc = subprocess.run([sys.executable, "-m", "llama_course", "eval", str(trained / "int8"), "--json"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    int8 = json.loads(proc.stdout)
    assert int8["params_bytes"] <= 0.30 * teacher["params_bytes"] and int8["n_params"] == teacher["n_params"]
    assert abs(int8["val_loss"] - teacher["val_loss"]) < 0.02 * teacher["val_loss"]
    r = {name: measure(trained / name) for name in ("int4", "prune", "structured", "distill")}
    assert r["int4"]["params_bytes"] < 0.6 * int8["params_bytes"]
    assert r["prune"]["sparsity"] == pytest.approx(0.5, abs=1e-4)
    assert r["structured"]["forward_flops_per_token"] < 0.7 * teacher["forward_flops_per_token"]
    assert r["structured"]["params_bytes"] < 0.7 * teacher["params_bytes"]
    assert r["distill"]["n_params"] < teacher["n_params"]
    assert all(math.isfinite(x["val_loss"]) for x in r.values())
    manifest = json.load(open(trained / "structured" / "manifest.json"))
    assert manifest["compression"]["layers"][0] == {"n_heads": 2, "n_kv_heads": 2, "ffn_dim": 96}
    capsys.readouterr()
    for name in ("int4", "structured"):
        assert main(["generate", str(trained / name), "--prompt", "def", "--max-new-tokens", "5"]) == 0
        assert capsys.readouterr().out.startswith("def")
    # fine-tune the pruned checkpoint with `train`: the zeros stay zero, the checkpoint keeps its shape
    cfg = load_config(str(trained / "prune" / "config.yaml"),
                      FAST + ["training.steps=2", f"training.init_from={trained / 'prune'}"])
    run_worker(cfg, checkpoint_dir=str(trained / "ft"), quiet=True)
    assert measure(trained / "ft")["sparsity"] == pytest.approx(0.5, abs=1e-4)
    with pytest.raises(ConfigError, match="init_from: the checkpoint's model differs: n_layers 2"):
        run_worker(load_config(TINY, FAST + [f"training.init_from={trained / 'distill'}"]), quiet=True)


def test_prune_then_quantize_and_never_quantize_twice(trained):
    from llama_course.core.checkpoint import load_model

    quiet = dict(log=lambda m: None)
    compress(str(trained / "teacher"), "prune", str(trained / "s"), ["sparsity=0.5", "structured=true"], **quiet)
    compress(str(trained / "s"), "int8", str(trained / "s8"), **quiet)
    model, _, _ = load_model(str(trained / "s8"))
    wq = model.layers[0].attention.wq
    assert isinstance(wq, Q.QuantLinear) and (wq.out_features, wq.in_features) == (32, 64)
    assert [h["method"] for h in model.compression["history"]] == ["prune", "int8"]
    with pytest.raises(ConfigError, match="already quantized"):
        compress(str(trained / "s8"), "int4", str(trained / "q4"))
