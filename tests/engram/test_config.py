import pytest

from engram.config import ConfigError, EngramConfig, ModelConfig, MoEConfig, build


@pytest.mark.parametrize("kwargs, field, words", [
    (dict(d_model=-4), "d_model", ">= 1"),
    (dict(n_heads=3, d_model=64), "n_heads", "not divisible"),
    (dict(n_layers=4, engram=EngramConfig(layers=[4])), "engram.layers", "outside the model"),
    (dict(moe=MoEConfig(first_dense=9), n_layers=4), "moe.first_dense", "exceeds"),
    (dict(vocab_size=100, engram=EngramConfig(layers=[0], pad_id=100)), "engram.pad_id", "not a token id"),
])
def test_model_config_names_the_field(kwargs, field, words):
    with pytest.raises(ConfigError) as err:
        ModelConfig(**kwargs)
    assert err.value.field == field
    assert words in str(err.value)


@pytest.mark.parametrize("kwargs, field", [
    (dict(top_k=9, n_routed=8), "top_k"),
    (dict(expert_hidden=0), "expert_hidden"),
    (dict(score_func="relu"), "score_func"),
])
def test_moe_config_names_the_field(kwargs, field):
    with pytest.raises(ConfigError) as err:
        MoEConfig(**kwargs)
    assert err.value.field == field


@pytest.mark.parametrize("kwargs, field", [
    (dict(orders=[1, 2]), "orders"),
    (dict(mem_dim=100, heads=8), "mem_dim"),
    (dict(rows=[10, 10, 10]), "rows"),
    (dict(rows=0), "rows"),
    (dict(layers=[]), "layers"),
    (dict(layers=[1, 1]), "layers"),
    (dict(gate="tanh"), "gate"),
    (dict(variant="overencoding", layers=[2]), "layers"),
])
def test_engram_config_names_the_field(kwargs, field):
    with pytest.raises(ConfigError) as err:
        EngramConfig(**kwargs)
    assert err.value.field == field


def test_build_from_nested_dict_reports_full_path():
    cfg = build(ModelConfig, {"d_model": 64, "n_heads": 2, "engram": {"layers": [1], "mem_dim": 64}})
    assert cfg.engram.layers == [1] and cfg.engram.rows == [4099, 4099]
    with pytest.raises(ConfigError) as err:
        build(ModelConfig, {"engram": {"mem_dims": 64}}, "model")
    assert err.value.field == "model.engram.mem_dims" and "unknown field" in str(err.value)
    with pytest.raises(ConfigError) as err:
        build(ModelConfig, {"moe": {"top_k": 3, "n_routed": 2}}, "model")
    assert err.value.field == "model.moe.top_k"
    with pytest.raises(ConfigError) as err:
        build(ModelConfig, {"d_model": "wide"}, "model")
    assert err.value.field == "model.d_model" and "expected a number" in str(err.value)
