"""The mechanistic probes on tiny untrained models (the probes' properties hold at any weights), and
``engram-lab probe`` end to end on an Engram checkpoint and its MoE twin."""

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from engram.config import EngramConfig
from engram.model import EngramLM
from engram_lab.cli import main
from eval import probes
from engram_lab.records import PROBE_FIELDS, probe_path, read_probe_record
from tests.engram.variants import base

# two Engram layers with two hyper-connection branches each: four gate channels
HC_MODEL = base(hc_mult=2)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return EngramLM(HC_MODEL).eval()


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, HC_MODEL.vocab_size, (4, 24), generator=torch.Generator().manual_seed(1))


def test_logit_lens_is_zero_at_the_last_layer_only(model, ids):
    out = probes.logit_lens(model, ids, batch_size=3)
    assert out["layers"] == list(range(HC_MODEL.n_layers + 1)) and out["n_tokens"] == ids.numel()
    assert out["kl"][-1] == 0.0
    assert all(kl > 0 for kl in out["kl"][:-1])


def test_unbiased_hsic_matches_its_formula_with_explicit_matrix_products():
    x, y = torch.randn(2, 10, 6, dtype=torch.float64)
    n = 10
    k, l_ = x @ x.T, y @ y.T
    k.fill_diagonal_(0)
    l_.fill_diagonal_(0)
    one = torch.ones(n, 1, dtype=torch.float64)
    expected = (torch.trace(k @ l_) + (one.T @ k @ one) * (one.T @ l_ @ one) / ((n - 1) * (n - 2))
                - 2 / (n - 2) * (one.T @ k @ l_ @ one)) / (n * (n - 3))
    got = probes.unbiased_hsic(probes._grams([x]), probes._grams([y]))
    torch.testing.assert_close(got, expected.reshape(1, 1))
    grams = probes._grams([x, y, x + y])
    torch.testing.assert_close(probes.self_hsic(grams), probes.unbiased_hsic(grams, grams).diagonal())


def test_cka_of_a_model_with_itself_has_ones_on_the_diagonal(model, ids):
    matrix = probes.cka(model, model, ids, batch_size=2)
    assert matrix.shape == (HC_MODEL.n_layers + 1,) * 2
    np.testing.assert_allclose(np.diag(matrix), 1.0, atol=1e-12)
    np.testing.assert_allclose(matrix, matrix.T, atol=1e-12)


def test_cka_is_invariant_to_an_orthogonal_rotation_and_low_for_unrelated_features(model, ids):
    _, states = model(ids, output_hidden=True)
    q, _ = torch.linalg.qr(torch.randn(HC_MODEL.d_model, HC_MODEL.d_model))
    rotated = [s @ q for s in states]
    same = probes.cka_states([(states, states)])
    np.testing.assert_allclose(probes.cka_states([(states, rotated)]), same, atol=1e-5)
    unrelated = [torch.randn_like(s) for s in states]
    assert np.abs(probes.cka_states([(states, unrelated)])).max() < 0.2


def test_layer_matching_gives_the_argmax_and_the_top_k_weighted_layer():
    matrix = np.array([[0.9, 0.1, -0.5],
                       [0.2, 0.6, 0.2],
                       [0.0, 0.3, 0.9]])
    best, soft = probes.layer_matching(matrix, k=2)
    assert best == [0, 1, 2]
    np.testing.assert_allclose(soft, [0.1 / 1.0, (0.6 * 1 + 0.2 * 2) / 0.8, (0.3 * 1 + 0.9 * 2) / 1.2])
    assert probes.soft_alignment_k(31) == 5 and probes.soft_alignment_k(7) == 2  # the paper's 5 of 30 layers


def test_gate_values_lie_in_the_open_unit_interval_per_branch_and_leave_the_output_alone(model, ids):
    before = model(ids)
    gates = probes.gate_values(model, ids)
    assert gates.shape == (*ids.shape, 4)
    assert probes.gate_channels(model) == ["layer 1 branch 0", "layer 1 branch 1", "layer 2 branch 0",
                                           "layer 2 branch 1"]
    assert ((gates > 0) & (gates < 1)).all()
    assert not torch.allclose(gates[..., 0], gates[..., 1])  # each branch has its own key projection
    assert torch.equal(model(ids), before)
    assert all(not m.record_gates and m.last_gates is None for m in model.engram_modules())


def test_models_without_a_gate_refuse_the_gate_probe(ids):
    for cfg in (base(engram=None), base(engram=EngramConfig(layers=[1], gate="none", mem_dim=32, heads=2))):
        with pytest.raises(ValueError, match="no gated Engram"):
            probes.gate_values(EngramLM(cfg).eval(), ids)


class ByteTokenizer:
    """Decodes id i as chr(65 + i % 26); id 0 ends a document."""
    eos_id = 0

    @staticmethod
    def decode(ids):
        return "".join(chr(65 + i % 26) for i in ids)


def test_top_gated_ngrams_average_the_gate_where_each_ngram_completes(model):
    ids = torch.tensor([[5, 6, 7, 5, 6, 7, 0, 5, 6, 8, 9, 10]] * 2)
    top = probes.top_gated_ngrams(model, ByteTokenizer(), ids, top=50, min_count=2)
    gates = probes.gate_values(model, ids)
    by_ngram = {tuple(t["ids"]): t for t in top}
    # (5, 6) completes at positions 1, 4 and 8 of both rows; (7, 0) and (0, 5) hold the end of a document
    assert by_ngram[5, 6]["count"] == 6 and (7, 0) not in by_ngram and (0, 5) not in by_ngram
    np.testing.assert_allclose(by_ngram[5, 6]["channel_means"], gates[:, [1, 4, 8]].mean((0, 1)).tolist(), atol=1e-6)
    assert by_ngram[5, 6]["ngram"] == "FG" and {len(k) for k in by_ngram} == {2, 3}
    assert [t["mean_gate"] for t in top] == sorted((t["mean_gate"] for t in top), reverse=True)


def test_memory_off_scores_each_half_and_category_against_the_model_as_trained(model, ids):
    # targets the model itself predicts: accuracy with the memory on is 1, so the retained share is the accuracy off
    targets = model(ids).argmax(-1)
    categories = torch.zeros_like(ids)
    categories[2:] = 1
    tokens = probes.ProbeTokens(ids, targets, categories, ["biography", "arithmetic"])
    rows = {r["name"]: r for r in probes.memory_off(model, tokens, batch_size=3)}
    assert list(rows) == ["static", "dynamic", "biography", "arithmetic"]
    assert [rows[n]["kind"] for n in rows] == ["static", "dynamic", "static", "dynamic"]
    for name, r in rows.items():
        assert r["n"] == ids.numel() // 2 and r["on"] == 1.0 and r["retained"] == r["off"] < 1
    assert model.memory_enabled


class InductionOracle(torch.nn.Module):
    """An ideal induction head: predicts the token that followed the last earlier occurrence of the current one."""

    def __init__(self, vocab: int):
        super().__init__()
        self.embed, self.vocab = torch.nn.Embedding(vocab, 1), vocab

    def forward(self, x_BT):
        logits = torch.zeros(*x_BT.shape, self.vocab)
        for b, j in itertools.product(range(x_BT.shape[0]), range(x_BT.shape[1])):
            earlier = (x_BT[b, :j] == x_BT[b, j]).nonzero()
            if len(earlier):
                logits[b, j, x_BT[b, earlier[-1, 0] + 1]] = 50.0
        return logits


def test_induction_scores_the_repeat_of_a_copier_and_not_of_an_untrained_model(model):
    tokenizer = SimpleNamespace(pad_id=0, bos_id=1, eos_id=2, vocab_size=HC_MODEL.vocab_size)
    uniform = np.log(HC_MODEL.vocab_size - 3)
    copier = probes.induction(InductionOracle(HC_MODEL.vocab_size), tokenizer, seq_len=24, n=6, batch_size=4)
    assert copier["repeat_accuracy"] == 1.0 and copier["repeat_loss"] < 1e-6
    assert copier["first_loss"] == pytest.approx(uniform, rel=0.05) and copier["score"] > 0.9 * uniform
    fresh = probes.induction(model, tokenizer, seq_len=24, n=6, batch_size=4)
    assert abs(fresh["score"]) < 0.05 and fresh["first_loss"] == pytest.approx(uniform, rel=0.05)
    assert fresh["uniform_loss"] == pytest.approx(uniform) and (fresh["n_sequences"], fresh["half_length"]) == (6, 12)


def test_induction_sees_copying_learned_by_a_model_trained_on_repeats():
    """A tiny model trained with the suite's optimizer on random sequences, each repeated once, learns to copy
    (~20 s on two cores); the probe reads no copying before training and near-perfect copying after."""
    from engram.config import ModelConfig
    from experiments.optim import OptimConfig, build_optimizers, set_learning_rates

    torch.manual_seed(0)
    vocab, steps = 128, 300
    tokenizer = SimpleNamespace(pad_id=0, bos_id=1, eos_id=2, vocab_size=vocab)
    model = EngramLM(ModelConfig(vocab_size=vocab, d_model=64, n_layers=2, n_heads=2, ffn_hidden=128, max_seq_len=32))
    assert abs(probes.induction(model.eval(), tokenizer, seq_len=32, n=32)["score"]) < 0.05
    optim = OptimConfig(lr=3e-3, warmup_steps=20)
    optimizers = build_optimizers(model.train(), optim).optimizers
    generator = torch.Generator().manual_seed(0)
    for step in range(steps):
        half = torch.randint(3, vocab, (32, 16), generator=generator)
        x = torch.cat([half, half], 1)
        for opt in optimizers:
            set_learning_rates(opt, step, steps, optim)
            opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[:, :-1]).reshape(-1, vocab), x[:, 1:].reshape(-1)).backward()
        for opt in optimizers:
            opt.step()
    copier = probes.induction(model.eval(), tokenizer, seq_len=32, n=32)
    assert copier["score"] > 2.0 and copier["repeat_accuracy"] > 0.9 and copier["first_accuracy"] < 0.1


def test_retained_rows_pair_the_eval_records_of_memory_on_and_off():
    def rec(memory, acc):
        return {"task": "engram_world_knowledge", "memory": memory, "n_samples": 20,
                "metrics": {"acc": {"value": acc, "stderr": 0.1}, "acc_norm": {"value": 0.5, "stderr": 0.1}}}

    rows = probes.retained_rows([rec("on", 0.8)], [rec("off", 0.2)])
    assert [(r["name"], r["metric"], r["source"]) for r in rows] == [("engram_world_knowledge", "acc", "lm-eval"),
                                                                     ("engram_world_knowledge", "acc_norm", "lm-eval")]
    assert rows[0]["retained"] == pytest.approx(0.25) and rows[1]["retained"] == 1.0


# -- end to end: two checkpoints ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A tiny Engram checkpoint and its MoE twin (no Engram) sharing one tokenizer, in the run-folder layout training
    leaves (runs/_runs/<run_id>/model). Each is fitted for a few steps, enough to predict frequent tokens, so that
    accuracies (and the memory-off shares of them) are above zero."""
    from experiments.checkpoint import save_model
    from experiments.config import resolve, trial_from_dict, trial_id
    from experiments.synthetic import SyntheticCorpus
    from experiments.tokenizer import train_bpe
    from tests.experiments.tiny import tiny

    root = tmp_path_factory.mktemp("probe-checkpoints")
    data = {"synthetic": {"n_entities": 40, "n_phrases": 20}}  # a small world builds in a fraction of a second
    trials = [resolve(trial_from_dict(tiny(data=data, model=model))) for model in ({}, {"engram": None})]
    texts = [text for text, _ in itertools.islice(SyntheticCorpus(trials[0].data.synthetic).documents("train"), 200)]
    tokenizer = train_bpe(texts, trials[0].data.vocab_size)
    stream = torch.tensor([i for text in texts for i in tokenizer.encode(text) + [tokenizer.eos_id]])
    batch = stream[: 16 * 65].view(16, 65)
    folders = []
    for trial in trials:
        torch.manual_seed(0)
        model = EngramLM(trial.model, tokenizer.compression(trial.model.vocab_size))
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(15):
            model.loss(batch[:, :-1], batch[:, 1:]).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        folders.append(save_model(root / "runs" / "_runs" / trial_id(trial) / "model", model.eval(), trial, tokenizer))
    return folders


def test_probe_command_writes_records_and_figures(checkpoints, tmp_path, capsys):
    engram, twin = checkpoints
    argv = ["probe", str(engram), "--against", str(twin.parent), "--results", str(tmp_path), "--tokens", "1024",
            "--batch-size", "4", "--device", "cpu"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    a, b = engram.parent.name, twin.parent.name
    expected = [probe_path(tmp_path, "", a, kind) for kind in ("logit_lens", "gate", "memory_off", "induction")]
    expected += [probe_path(tmp_path, "", a, "cka", against=b)]
    expected += [probe_path(tmp_path, "", b, kind) for kind in ("logit_lens", "induction")]
    assert sorted((tmp_path / "_runs" / "probes").rglob("*.json")) == sorted(expected)
    recs = {(r["run_id"], r["kind"]): r for r in map(read_probe_record, expected)}
    assert all(set(PROBE_FIELDS) <= set(r) for r in recs.values())
    assert "skipped gate on moe" in out and "skipped memory_off on moe" in out

    cka = recs[a, "cka"]
    assert (cka["label"], cka["against"], cka["against_label"]) == ("engram", b, "moe")
    assert np.asarray(cka["data"]["matrix"]).shape == (3, 3)  # embedding + 2 blocks each
    assert recs[a, "logit_lens"]["data"]["kl"][-1] == 0.0 and recs[b, "logit_lens"]["data"]["kl"][-1] == 0.0
    gate = recs[a, "gate"]["data"]
    assert gate["channels"] == ["layer 1"] and len(gate["gates"][0]) == len(gate["tokens"]) > 0
    assert all(0 < g < 1 for g in gate["gates"][0]) and gate["top_ngrams"]
    rows = {r["name"]: r for r in recs[a, "memory_off"]["data"]["rows"]}
    assert {"static", "dynamic"} <= set(rows) and rows["static"]["n"] + rows["dynamic"]["n"] == 1024
    assert 0 < rows["static"]["on"] and rows["static"]["retained"] == pytest.approx(rows["static"]["off"] /
                                                                                  rows["static"]["on"])

    figures = tmp_path / "_runs" / "figures"
    for stem in ("logit_lens", f"cka_{a}_vs_{b}", f"gates_{a}", f"gate_ngrams_{a}", "memory_off"):
        assert (figures / f"{stem}.png").stat().st_size > 0 and (figures / f"{stem}.pdf").is_file()


def test_memory_off_evaluation_of_a_model_without_memory_is_refused(checkpoints, tmp_path, capsys):
    _, twin = checkpoints
    assert main(["eval", str(twin), "--tasks", "engram_world_knowledge", "--memory", "off", "--results",
                 str(tmp_path), "--device", "cpu"]) == 2
    assert "has no Engram or OverEncoding table" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.json"))


def test_probe_command_explains_what_cannot_run(checkpoints, tmp_path, capsys):
    engram, twin = checkpoints
    assert main(["probe", str(twin), "--probes", "cka,gate", "--results", str(tmp_path), "--tokens", "256",
                 "--no-figures"]) == 0
    assert "skipped gate on moe: no gated Engram module" in capsys.readouterr().out
    assert not (tmp_path / "_runs").exists()
    assert main(["probe", str(engram), "--probes", "lens", "--results", str(tmp_path)]) == 2
    assert "unknown probes ['lens']" in capsys.readouterr().err
