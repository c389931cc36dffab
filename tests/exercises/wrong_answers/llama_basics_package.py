"""Exercise 1.5 by calling the runtime's packer (the test's oracle), 1.1 by counting a built model's
parameters, 1.7 as the mean of the ranks' means."""

from solutions.llama_basics import *  # noqa: F403

CONCEPT = "llama_basics"
WRONG = [{"exercise": "1.5", "fails": ["test_pack_documents_small", "test_pack_documents_matches_the_runtime"],
          "message": "LeakError", "why": "calls llama_course.core.data.pack"},
         {"exercise": "1.1", "fails": ["test_llama_params_published", "test_llama_params_matches_the_torch_model"],
          "message": "LeakError", "why": "builds the package's model and counts its parameters"},
         {"exercise": "1.7", "fails": ["test_global_mean_loss_weights_by_tokens"], "message": "!=",
          "why": "averages the ranks' own means"}]


def pack_documents(documents, seq_len, eot_id):
    import numpy as np

    from llama_course.core.data import pack

    if seq_len < 1:
        raise ValueError("seq_len must be >= 1")
    stream = np.array([t for d in documents for t in list(d) + [eot_id]])
    return pack(stream, seq_len).tolist()


def llama_params(dim, n_layers, n_heads, n_kv_heads, ffn_dim, vocab_size, tie_embeddings=False):
    import torch

    from llama_course.core.model import build_model
    from simulator.config import load_config

    cfg = load_config({"model": {"dim": dim, "n_layers": 1, "n_heads": n_heads, "n_kv_heads": n_kv_heads,
                                 "ffn_dim": ffn_dim, "vocab_size": vocab_size, "tie_embeddings": tie_embeddings},
                       "seq_len": 8})
    with torch.device("meta"):
        model = build_model(cfg)
    one = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    block = sum(p.numel() for p in model.layers[0].parameters())
    return one + (n_layers - 1) * block


def global_mean_loss(loss_sum, n_tokens, group=None):
    import torch
    import torch.distributed as dist

    t = torch.tensor([loss_sum / n_tokens], dtype=torch.float64)
    dist.all_reduce(t, group=group)
    return float(t[0]) / dist.get_world_size(group)
