import dataclasses

import pytest
import torch

from engram.budget import count, rho_grid, solve
from engram.config import ConfigError, EngramConfig, MoEConfig
from engram.model import EngramLM

from .variants import VARIANTS, base


@pytest.mark.parametrize("name", VARIANTS)
def test_count_equals_built_parameters_per_component(name):
    cfg = VARIANTS[name]
    model = EngramLM(cfg)
    built = model.parameter_counts()
    assert built == count(cfg).components
    assert sum(built.values()) == sum(p.numel() for p in model.parameters())


def test_rho_grid_counts_match_built_models_and_hold_the_budget():
    shape = base(d_model=128, n_layers=6, n_heads=4, ffn_hidden=384, vocab_size=2048,
                 moe=MoEConfig(n_routed=8, top_k=2, n_shared=1, expert_hidden=384, first_dense=1),
                 engram=EngramConfig(layers=[1], orders=[2, 3], heads=4, mem_dim=32))
    dense_act = count(dataclasses.replace(shape, engram=None)).P_act
    target = 10 * dense_act
    grid = rho_grid(shape, target, [0.0, 0.1, 0.2, 0.4, 0.6, 0.7, 0.8, 0.9, 1.0])
    acts = [c.P_act for _, _, c in grid]
    for rho, cfg, c in grid:
        assert abs(c.P_tot - target) <= 0.01 * target
        assert abs(c.rho - rho) < 0.03
        model = EngramLM(cfg)
        assert model.parameter_counts() == c.components
        assert c.P_tot == sum(p.numel() for n, p in model.named_parameters() if not n.startswith(("embed.", "head.")))
        assert c.P_sparse == c.P_tot - c.P_act == c.P_moe_sparse + c.P_engram
    assert (max(acts) - min(acts)) / min(acts) < 0.01
    assert grid[-1][1].engram is None  # rho = 1 is pure MoE
    assert grid[0][2].experts == shape.moe.top_k  # rho = 0: every token's experts are all there are
    assert [c.experts for _, _, c in grid] == sorted(c.experts for _, _, c in grid)


def test_active_parameters_by_hand():
    cfg = base(engram=None, moe=MoEConfig(n_routed=8, top_k=2, n_shared=1, expert_hidden=64, first_dense=1))
    c = count(cfg)
    expert = 3 * 64 * 64
    assert c.P_moe_sparse == 3 * (8 - 2) * expert
    assert c.P_act == c.P_tot - c.P_moe_sparse
    assert c.rho == 1.0
    e = base()
    ce = count(e)
    assert ce.P_engram == ce.components["engram_tables"] - 2 * 4 * 8  # 2 layers x 4 sub-tables x 8-wide rows
    dense = count(base(moe=None, engram=None))
    assert dense.rho is None and dense.P_sparse == 0


def test_flops_per_token_counts_every_active_matmul():
    cfg = base(moe=None, engram=None, n_layers=2, d_model=64, n_heads=4, ffn_hidden=128, vocab_size=100,
               max_seq_len=32)
    c = count(cfg)
    per_layer = 4 * 64 * 64 + 3 * 64 * 128
    assert c.flops_per_token_no_attention == 2 * (2 * per_layer + 100 * 64)
    assert c.flops_per_token == c.flops_per_token_no_attention + 4 * 2 * 64 * 32
    assert c.train_flops_per_token == 3 * c.flops_per_token


def test_solver_refuses_infeasible_budgets_naming_the_quantity():
    shape = base()
    with pytest.raises(ConfigError) as err:
        solve(shape, total_params=1000, rho=0.8)
    assert err.value.field == "total_params"
    with pytest.raises(ConfigError) as err:
        solve(shape, total_params=count(shape).P_tot * 3, rho=1.5)
    assert err.value.field == "rho"
    with pytest.raises(ConfigError) as err:
        solve(base(engram=None), total_params=count(shape).P_tot * 3, rho=0.5)
    assert err.value.field == "model.engram"
    with pytest.raises(ConfigError) as err:
        solve(shape, total_params=count(shape).P_tot * 3, rho=0.5, active_params=10)
    assert err.value.field == "active_params"
    per_expert = 3 * 64 * 64 * 3  # one expert in each of the 3 MoE layers
    with pytest.raises(ConfigError) as err:  # whole experts round up past the budget: nothing left for Engram
        solve(shape, total_params=count(shape).P_act + 6.6 * per_expert, rho=0.99)
    assert err.value.field == "rho"


def test_model_flops_and_counts_agree():
    cfg = base()
    assert EngramLM(cfg).flops_per_token() == count(cfg).flops_per_token
    assert torch.is_tensor(EngramLM(cfg).embed.weight)
