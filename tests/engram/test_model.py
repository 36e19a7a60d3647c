import pytest
import torch

from engram.compress import Compression
from engram.config import EngramConfig, ModelConfig, MoEConfig
from engram.model import EngramLM
from engram.moe import MoE, experts_loop

from .variants import VARIANTS, base


def test_causality_with_engram_4grams_conv_hyperconnections_and_moe():
    cfg = base(hc_mult=2, engram=EngramConfig(layers=[0, 2], orders=[2, 3, 4], heads=2, mem_dim=48, rows=97,
                                              conv_init="default", gate="signed_sqrt"))
    model = EngramLM(cfg).eval()
    x = torch.randint(0, cfg.vocab_size, (2, 40))
    ref = model(x)
    for t in (0, 7, 25):
        y = x.clone()
        y[:, t + 1:] = torch.randint(0, cfg.vocab_size, y[:, t + 1:].shape)
        out = model(y)
        torch.testing.assert_close(out[:, :t + 1], ref[:, :t + 1], rtol=0, atol=1e-5)
        assert not torch.allclose(out[:, t + 1:], ref[:, t + 1:])


@pytest.mark.parametrize("name", VARIANTS)
def test_forward_backward_every_variant(name):
    cfg = VARIANTS[name]
    model = EngramLM(cfg)
    x = torch.randint(0, cfg.vocab_size, (2, 24))
    out = model.loss(x[:, :-1], x[:, 1:])
    assert torch.isfinite(out.loss)
    out.loss.backward()
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), n
    if cfg.engram is not None and cfg.engram.control == "frozen_random":
        assert all(not p.requires_grad for p in model.table_parameters())


def test_conv_zero_init_starts_as_identity_and_memory_off_changes_output():
    cfg = base()
    model = EngramLM(cfg).eval()
    for m in model.engram_modules():
        assert m.conv_weight.abs().sum() == 0
    x = torch.randint(0, cfg.vocab_size, (1, 16))
    with_memory = model(x)
    with model.memory_off():
        without = model(x)
    assert model.memory_enabled
    assert not torch.allclose(with_memory, without)


def test_compression_merges_slots():
    cfg = base(vocab_size=64, engram=EngramConfig(layers=[1], mem_dim=32, heads=2, rows=101))
    lookup = tuple(i // 2 for i in range(64))  # ids 2j and 2j+1 are the same word
    model = EngramLM(cfg, Compression(lookup, 32))
    a = model.slots(torch.tensor([[4, 10, 20]]))
    b = model.slots(torch.tensor([[5, 11, 21]]))
    assert torch.equal(a, b)
    plain = EngramLM(cfg)
    assert not torch.equal(plain.slots(torch.tensor([[4, 10, 20]])), plain.slots(torch.tensor([[5, 11, 21]])))


def test_moe_matches_a_dense_per_token_reference():
    torch.manual_seed(1)
    moe = MoE(16, MoEConfig(n_routed=6, top_k=2, n_shared=1, expert_hidden=8))
    for p in moe.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, 5, 16)
    y = moe(x)
    sel, w, _ = moe.route(x.view(-1, 16))
    ref = torch.stack([
        sum(w[i, j] * torch.nn.functional.silu(xi @ moe.w1_EFD[e].T) * (xi @ moe.w3_EFD[e].T) @ moe.w2_EDF[e].T
            for j, e in enumerate(sel[i].tolist())) + moe.shared(xi)
        for i, xi in enumerate(x.view(-1, 16))
    ])
    torch.testing.assert_close(y.view(-1, 16), ref, rtol=1e-5, atol=1e-5)


def test_bias_balancing_moves_a_skewed_router_toward_uniform():
    torch.manual_seed(0)
    moe = MoE(8, MoEConfig(n_routed=8, top_k=2, n_shared=0, expert_hidden=4, bias_update_rate=0.02))
    with torch.no_grad():
        moe.router.weight.normal_(std=0.1)
        moe.router.weight[0] += 1.0  # expert 0 attracts every token with a positive first feature
    x = torch.randn(512, 1, 8).abs()
    moe.train()

    def imbalance():
        moe.load.zero_()
        moe(x)
        load = moe.load.clone()
        return (load.max() / load.mean()).item()

    before = imbalance()
    for _ in range(200):
        moe(x)
        moe.update_bias()
    after = imbalance()
    assert before > 3.0 and after < before / 2, (before, after)
    # the bias steers selection only: gate weights still come from the unbiased scores
    sel, w, scores = moe.route(x.view(-1, 8))
    torch.testing.assert_close(w, scores.gather(-1, sel) / scores.gather(-1, sel).sum(-1, keepdim=True))


def test_aux_loss_is_collected_when_enabled():
    cfg = base(engram=None, moe=MoEConfig(n_routed=4, top_k=2, aux_loss_coef=0.01, expert_hidden=16))
    model = EngramLM(cfg)
    x = torch.randint(0, cfg.vocab_size, (2, 12))
    out = model.loss(x, x)
    assert out.aux_loss > 0 and torch.allclose(out.loss, out.lm_loss + out.aux_loss)


def test_expert_loop_handles_empty_experts():
    x = torch.randn(5, 4)
    counts = torch.tensor([0, 5, 0])
    w1, w3, w2 = torch.randn(3, 6, 4), torch.randn(3, 6, 4), torch.randn(3, 4, 6)
    y = experts_loop(x, counts, w1, w3, w2)
    torch.testing.assert_close(y, (torch.nn.functional.silu(x @ w1[1].T) * (x @ w3[1].T)) @ w2[1].T)


def test_hidden_states_and_sequence_limit():
    cfg = base()
    model = EngramLM(cfg)
    x = torch.randint(0, cfg.vocab_size, (1, 8))
    logits, hidden = model(x, output_hidden=True)
    assert len(hidden) == cfg.n_layers + 1
    torch.testing.assert_close(model.logits(hidden[-1]), logits)
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, cfg.max_seq_len + 1, dtype=torch.long))
    assert isinstance(ModelConfig().to_dict(), dict)


def test_moe_gradients_match_the_per_token_reference():
    """The dispatch and combine permutations have hand-written (gather-only) backwards: check them end to end."""
    torch.manual_seed(2)
    moe = MoE(12, MoEConfig(n_routed=5, top_k=3, n_shared=0, expert_hidden=6))
    for p in moe.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(7, 12, requires_grad=True)
    g = torch.randn(7, 12)
    (moe(x[None])[0] * g).sum().backward()
    got = (x.grad.clone(), moe.w1_EFD.grad.clone(), moe.w2_EDF.grad.clone())
    x.grad = None
    moe.zero_grad()
    sel, w, _ = moe.route(x)  # with the router in the graph: x's gradient flows through the gate weights too
    ref = torch.stack([
        sum(w[i, j] * torch.nn.functional.silu(xi @ moe.w1_EFD[e].T) * (xi @ moe.w3_EFD[e].T) @ moe.w2_EDF[e].T
            for j, e in enumerate(sel[i].tolist()))
        for i, xi in enumerate(x)
    ])
    (ref * g).sum().backward()
    for ours, theirs in zip(got, (x.grad, moe.w1_EFD.grad, moe.w2_EDF.grad)):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)

