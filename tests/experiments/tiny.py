"""A trial small enough to train in seconds on a 2-core CPU, for the training tests."""

import copy

TINY = {
    "experiment": "test",
    "seed": 0,
    "model": {"d_model": 64, "n_layers": 2, "n_heads": 2, "ffn_hidden": 128, "max_seq_len": 64,
              "moe": {"n_routed": 4, "top_k": 2, "n_shared": 1, "expert_hidden": 32, "first_dense": 1},
              "engram": {"layers": [1], "orders": [2, 3], "heads": 2, "mem_dim": 32, "rows": 499}},
    "data": {"source": "synthetic", "vocab_size": 512, "tokenizer_docs": 800, "seq_len": 64},
    "optim": {"lr": 1e-2, "warmup_steps": 5},
    "train": {"batch_size": 8, "tokens": 8 * 64 * 60, "eval_every_tokens": 8 * 64 * 20, "val_tokens": 2048,
              "checkpoint_every_steps": 10, "progress_bar": False, "deterministic": True},
}


def tiny(**sections) -> dict:
    """TINY with sections updated, e.g. tiny(train={"tokens": 1000})."""
    out = copy.deepcopy(TINY)
    for key, value in sections.items():
        if isinstance(value, dict):
            out.setdefault(key, {}).update(value)
        else:
            out[key] = value
    return out
