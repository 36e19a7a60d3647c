"""Small model configs shared by the library tests: one of every variant the accounting must get right."""

from engram.config import EngramConfig, ModelConfig, MoEConfig


def base(**kw):
    cfg = dict(vocab_size=1024, d_model=64, n_layers=4, n_heads=4, max_seq_len=64, ffn_hidden=128,
               moe=MoEConfig(n_routed=8, top_k=2, n_shared=1, expert_hidden=64, first_dense=1),
               engram=EngramConfig(layers=[1, 2], orders=[2, 3], heads=2, mem_dim=32, rows=257))
    cfg.update(kw)
    return ModelConfig(**cfg)


VARIANTS = {
    "engram+moe": base(),
    "engram+moe+hc": base(hc_mult=3),
    "single-fusion+hc": base(hc_mult=2, engram=EngramConfig(layers=[1], multi_branch=False, mem_dim=32, heads=2)),
    "no-gate-no-conv+bias": base(engram=EngramConfig(layers=[0, 3], gate="none", conv=False, proj_bias=True,
                                                     mem_dim=32, heads=2)),
    "4-gram": base(engram=EngramConfig(layers=[1], orders=[2, 3, 4], heads=2, mem_dim=48, rows=[100, 200, 300])),
    "bigram-hash": base(engram=EngramConfig(variant="bigram_hash", layers=[0, 1, 2, 3], orders=[2], heads=1,
                                            mem_dim=64, rows=500)),
    "overencoding": base(engram=EngramConfig(variant="overencoding", layers=[0], orders=[2, 3], heads=4,
                                             mem_dim=128, rows=300)),
    "single-row": base(engram=EngramConfig(layers=[1], control="single_row", mem_dim=32, heads=2)),
    "frozen": base(engram=EngramConfig(layers=[1], control="frozen_random", mem_dim=32, heads=2)),
    "dense": base(moe=None, engram=None),
    "dense-tied": base(moe=None, engram=None, tie_embeddings=True),
    "moe-gqa": base(engram=None, n_kv_heads=2),
}
