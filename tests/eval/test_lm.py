"""The lm-eval adapter against brute force on the model itself: one unpadded sequence at a time, log-softmax summed."""

import lm_eval.api.registry
import pytest
import torch
from lm_eval.api.instance import Instance

from eval.lm import EngramEvalLM, cut_at_stop, encode_pair


def request(kind, *args):
    return Instance(kind, {}, args, 0)


def log_softmax(lm, ids, memory="on"):
    """Log-probabilities [T, V] of one sequence, run alone (no batch, no padding)."""
    with torch.no_grad():
        if memory == "off":
            with lm.model.memory_off():
                return lm.model(torch.tensor([ids])).float().log_softmax(-1)[0]
        return lm.model(torch.tensor([ids])).float().log_softmax(-1)[0]


def brute_loglikelihood(lm, context, continuation, memory="on"):
    """lm-eval's rule re-derived: the context's trailing whitespace starts the continuation; the whole string is
    encoded and split where the context ends; an empty context is the end-of-text token; the input keeps its last
    max_length tokens."""
    tok = lm.tokenizer
    stripped = context.rstrip()
    continuation = context[len(stripped):] + continuation
    if stripped:
        whole = tok.encode(stripped + continuation)
        n_cont = len(whole) - len(tok.encode(stripped))
    else:
        whole = [tok.eos_id] + tok.encode(continuation)
        n_cont = len(whole) - 1
    whole = whole[-(lm.max_length + 1):]
    logprobs = log_softmax(lm, whole[:-1], memory)
    positions = range(len(whole) - 1 - n_cont, len(whole) - 1)
    targets = whole[-n_cont:]
    total = sum(logprobs[p, t].item() for p, t in zip(positions, targets))
    greedy = all(logprobs[p].argmax().item() == t for p, t in zip(positions, targets))
    return total, greedy


def greedy_next_text(lm, context):
    """The continuation text of the model's single most likely next token after ``context``."""
    token = log_softmax(lm, lm.tokenizer.encode(context))[-1].argmax().item()
    return lm.tokenizer.decode([token])


def test_loglikelihood_matches_brute_force(lm):
    greedy_word = greedy_next_text(lm, "The capital of")
    pairs = [
        ("The capital of", " Dravon is Port Tessa."),  # continuation starting with a space, several tokens
        ("Question: Where was Bralo Tessum born?\nAnswer: ", "Port Tessa"),  # the space moves to the continuation
        ("", "hello world"),  # empty context: conditioned on end-of-text
        ("2 + 2 =", " 4"),  # one token: shares its forward pass with the next request
        ("2 + 2 =", " 5"),
        ("The capital of", greedy_word),  # the greedy continuation
        ("word " * 1500, "end of it"),  # longer than the context: truncated from the left
    ]
    got = lm.loglikelihood([request("loglikelihood", c, x) for c, x in pairs])
    for (context, continuation), (logprob, greedy) in zip(pairs, got):
        want_logprob, want_greedy = brute_loglikelihood(lm, context, continuation)
        assert logprob == pytest.approx(want_logprob, abs=1e-5), (context[:30], continuation)
        assert greedy == want_greedy, (context[:30], continuation)
    assert got[5][1] is True and got[0][1] is False


def test_encode_pair_splits_where_the_context_ends(lm):
    tok = lm.tokenizer
    context_ids, continuation_ids = encode_pair(tok, "Answer: ", "Port Tessa", tok.eos_id)
    assert (context_ids, continuation_ids) == encode_pair(tok, "Answer:", " Port Tessa", tok.eos_id)
    assert context_ids + continuation_ids == tok.encode("Answer: Port Tessa")
    assert tok.decode(continuation_ids) == " Port Tessa"


def test_memory_off_suppresses_the_engram_output(lm, checkpoint):
    off = EngramEvalLM(checkpoint, batch_size=2, device="cpu", memory="off")
    pair = ("The capital of", " Dravon is Port Tessa.")
    (logprob_off, _), = off.loglikelihood([request("loglikelihood", *pair)])
    (logprob_on, _), = lm.loglikelihood([request("loglikelihood", *pair)])
    assert logprob_off == pytest.approx(brute_loglikelihood(off, *pair, memory="off")[0], abs=1e-5)
    assert abs(logprob_off - logprob_on) > 1e-3


def test_rolling_loglikelihood_in_one_window_is_the_whole_text_given_end_of_text(lm):
    text = "The capital of Dravon is Port Tessa. The river Olm flows through it."
    ids = lm.tokenizer.encode(text)
    logprobs = log_softmax(lm, [lm.eot_token_id] + ids[:-1])
    want = sum(logprobs[i, t].item() for i, t in enumerate(ids))
    (got,) = lm.loglikelihood_rolling([request("loglikelihood_rolling", text)])
    assert got == pytest.approx(want, abs=1e-5)


def test_rolling_windows_fit_the_context_and_score_every_token_once(lm, monkeypatch):
    text = " ".join(f"word{i % 97}" for i in range(1200))
    ids = lm.tokenizer.encode(text)
    assert len(ids) > 2 * lm.max_length
    windows = lm.rolling_windows(text)
    assert [t for _, scored in windows for t in scored] == ids  # disjoint and complete, in order
    widths = []
    forward = lm._logits
    monkeypatch.setattr(lm, "_logits", lambda rows: widths.extend(map(len, rows)) or forward(rows))
    (got,) = lm.loglikelihood_rolling([request("loglikelihood_rolling", text)])
    assert widths and max(widths) <= lm.max_length
    want = 0.0
    for context, scored in windows:  # each window alone, by brute force
        whole = context + scored
        logprobs = log_softmax(lm, whole[:-1])
        want += sum(logprobs[len(whole) - 1 - len(scored) + k, t].item() for k, t in enumerate(scored))
    assert got == pytest.approx(want, rel=1e-7)  # ~3000 float32 terms: relative, not absolute, rounding


def brute_greedy(lm, ids, n):
    """``n`` greedy tokens after ``ids``, one unpadded forward pass per token."""
    ids, out = list(ids), []
    for _ in range(n):
        token = log_softmax(lm, ids)[-1].argmax().item()
        if token == lm.eot_token_id:
            break
        out.append(token)
        ids.append(token)
    return out


def test_generate_until_stops_at_max_tokens_and_at_stop_sequences(lm):
    context = "Keep track of the variables.\nLet"
    free = lm.tokenizer.decode(brute_greedy(lm, lm.tokenizer.encode(context), 12))
    stop = free.strip()[2:4]  # a stop sequence that the free generation reaches after a few characters
    assert stop and stop in free
    got = lm.generate_until([
        request("generate_until", context, {"until": [], "max_gen_toks": 12}),
        request("generate_until", context, {"until": [stop, "never appears"], "max_gen_toks": 12}),
        request("generate_until", context, {"until": [], "max_gen_toks": 3}),
    ])
    assert got[0] == free
    assert got[1] == free[:free.index(stop)] and stop not in got[1]
    assert got[2] == lm.tokenizer.decode(brute_greedy(lm, lm.tokenizer.encode(context), 3))


def test_generate_until_truncates_a_long_context_from_the_left(lm):
    context = " ".join(f"word{i % 89}" for i in range(1500))
    ids = lm.tokenizer.encode(context)
    (got,) = lm.generate_until([request("generate_until", context, {"until": [], "max_gen_toks": 4})])
    assert got == lm.tokenizer.decode(brute_greedy(lm, ids[-(lm.max_length - 4):], 4))


def test_cut_at_stop_takes_the_earliest_stop_sequence():
    assert cut_at_stop("A: yes\n\nQ: next", ["Q", "\n\n"]) == "A: yes"
    assert cut_at_stop("no stop here", ["</s>", ""]) == "no stop here"


def test_model_args_string_and_registry(checkpoint):
    assert lm_eval.api.registry.get_model("engram") is EngramEvalLM
    lm = EngramEvalLM.create_from_arg_string(f"ckpt={checkpoint},batch_size=5,memory=off",
                                             {"device": "cpu", "batch_size": None, "max_batch_size": None})
    assert (lm.batch_size, lm.memory, lm.device.type) == (5, "off", "cpu")
    with pytest.raises(ValueError, match="memory"):
        EngramEvalLM(checkpoint, memory="maybe")
