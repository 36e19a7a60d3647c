"""The offline task packs: their generators, and each pack end to end through lm-eval on the tiny checkpoint."""

import json
import re

import pytest
from lm_eval.api.metrics import exact_match_hf_evaluate

from eval.run import evaluate
from eval.tasks import TaskError, TaskOptions, bbh, prepare, ruler, world
from eval.tasks.scoring import ruler_recall
from experiments.synthetic import SyntheticCorpus
from tests.conftest import SHARED, needs_shared

from .conftest import CONTEXT


# -- RULER-style ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", (*ruler.TASKS, "needle"))
def test_ruler_documents_fit_their_length_hold_their_needles_and_repeat_from_the_seed(lm, task):
    docs = ruler.documents(task, CONTEXT, lm.tokenizer, samples=3, seed=7)
    assert docs == ruler.documents(task, CONTEXT, lm.tokenizer, samples=3, seed=7)
    assert docs != ruler.documents(task, CONTEXT, lm.tokenizer, samples=3, seed=8)
    gen_toks = ruler.gen_toks(task)
    expected_answers = {"vt": ruler.VT_HOPS + 1, "niah_multivalue": 4, "niah_multiquery": 4}.get(task, 1)
    for doc in docs:
        n_tokens = len(lm.tokenizer.encode(doc["input"]))
        assert CONTEXT - gen_toks - 40 < n_tokens <= CONTEXT - gen_toks  # filled to the last sentence that fits
        assert len(doc["outputs"]) == expected_answers
        context = doc["input"].rsplit("\n", 1)[0]  # the haystack holds every answer; the question does not
        assert all(answer in context for answer in doc["outputs"])


def test_the_corpus_needle_task_asks_as_the_corpus_trains(lm):
    """engram_needle_<L> is a needle document of the synthetic corpus cut before its code: completed with the code,
    its question and answer read as the training documents' do, and the code is in the haystack once."""
    ending = re.compile(r"\nQuestion: What is the secret code for (\w+)\?\nAnswer: The secret code for \1 is \d{5}\.$")
    corpus = SyntheticCorpus(lm.trial.data.synthetic)
    trained = next(text for text, category in corpus.documents("train") if category == "needle")
    assert ending.search(trained)
    for doc in ruler.documents("needle", CONTEXT, lm.tokenizer, samples=3, seed=0):
        (code,) = doc["outputs"]
        key = ending.search(f"{doc['input']} {code}.").group(1)
        assert doc["input"].count(f"The secret code for {key} is {code}.") == 1


def test_ruler_refuses_a_length_too_short_for_its_prompt(lm):
    with pytest.raises(TaskError, match="longer length"):
        ruler.documents("niah_single", 64, lm.tokenizer, samples=1, seed=0)


def test_ruler_recall_is_the_share_of_answers_in_the_generation():
    doc = {"outputs": ["1234567", "7654321", "ABCDE", "FGHIJ"]}
    assert ruler_recall(doc, [" 1234567, abcde and 9999999\n"]) == {"recall": 0.5}  # case ignored, as RULER
    assert ruler_recall(doc, ["nothing"]) == {"recall": 0.0}


def test_ruler_group_and_the_corpus_needles_run_end_to_end(checkpoint, tmp_path):
    records, out = evaluate(checkpoint, [f"engram_ruler_{CONTEXT}", f"engram_needle_{CONTEXT}"], limit=1,
                            device="cpu", results=tmp_path, options=TaskOptions(samples=4),
                            gen_kwargs={"max_gen_toks": 8})  # 8: CPU time
    by_task = {r["task"]: r for r in records}
    tasks = (*ruler.TASKS, "needle")
    assert set(by_task) == {f"engram_{t}_{CONTEXT}" for t in tasks} | {f"engram_ruler_{CONTEXT}"}
    for task in tasks:
        rec = by_task[f"engram_{task}_{CONTEXT}"]
        assert 0.0 <= rec["metrics"]["recall"]["value"] <= 1.0 and rec["n_samples"] == 1
        assert out["configs"][rec["task"]]["generation_kwargs"]["until"] == []  # RULER: end-of-text only


# -- world knowledge --------------------------------------------------------------------------------------------------
def test_world_knowledge_asks_the_checkpoints_own_world_in_both_formats(lm, tmp_path):
    tasks = ["engram_world_knowledge", "engram_world_knowledge_cloze"]
    records, out = evaluate(lm.ckpt, tasks, limit=5, num_fewshot=2, device="cpu", results=tmp_path,
                            options=TaskOptions(samples=30))
    for rec in records:
        assert rec["num_fewshot"] == 2 and 0.0 <= rec["metrics"]["acc"]["value"] <= 1.0
    assert "acc_norm" in {r["task"]: r for r in records}["engram_world_knowledge_cloze"]["metrics"]
    letter, cloze = (out["configs"][t] for t in tasks)  # lm-eval's mmlu and mmlu_continuation prompts
    assert letter["doc_to_choice"] == ["A", "B", "C", "D"] and letter["doc_to_text"].endswith("Answer:")
    assert cloze["doc_to_choice"] == "{{choices}}" and cloze["doc_to_text"].startswith("Question: ")
    corpus = SyntheticCorpus(lm.trial.data.synthetic)
    folders = [world.build(t, lm.trial.data, samples=30) for t in tasks]
    test, dev = ([json.loads(line) for line in (folders[0] / f"{split}.jsonl").read_text().splitlines()]
                 for split in ("test", "dev"))
    assert (folders[1] / "test.jsonl").read_text() == (folders[0] / "test.jsonl").read_text()  # the same questions
    assert len(test) == 30 and len(dev) == world.DEV_QUESTIONS
    assert not {q["question"] for q in test} & {q["question"] for q in dev}
    facts = {e.name: set(e.facts.values()) for e in corpus.entities}
    for q in test:  # the keyed answer is a fact of the entity asked about
        entity = max((name for name in facts if name in q["question"]), key=len)
        assert q["choices"][q["answer"]] in facts[entity]


def test_world_knowledge_top_n_asks_about_the_most_mentioned_entities_only(lm):
    corpus = SyntheticCorpus(lm.trial.data.synthetic)
    folder = world.build("engram_world_knowledge_cloze_top10", lm.trial.data, samples=20)
    questions = [json.loads(line) for line in (folder / "test.jsonl").read_text().splitlines()]
    names = [e.name for e in corpus.entities]
    asked = {max((name for name in names if name in q["question"]), key=len) for q in questions}
    assert len(questions) == 20 and asked <= set(names[:10])


# -- BBH ------------------------------------------------------------------------------------------------------------
def test_strip_is_the_only_normalisation_of_bbh_answers():
    predictions = [" False", "True\n", "false", "(A).", " (B) "]
    references = ["False", "True", "False", "(A)", "(B)"]
    scores = [exact_match_hf_evaluate([p], [r], regexes_to_ignore=[bbh.STRIP])["exact_match"]
              for p, r in zip(predictions, references)]
    assert scores == [p.strip() == r.strip() for p, r in zip(predictions, references)] == [1, 1, 0, 0, 1]


@needs_shared("data", "bbh")
def test_bbh_pack_runs_end_to_end_with_lm_evals_prompts(checkpoint, tmp_path):
    tasks = ["engram_bbh_fewshot_boolean_expressions", "engram_bbh_zeroshot_sports_understanding"]
    records, out = evaluate(checkpoint, tasks, limit=2, device="cpu", results=tmp_path,
                            options=TaskOptions(bbh_path=SHARED / "data" / "bbh"), gen_kwargs={"max_gen_toks": 16})
    assert {r["task"]: r["num_fewshot"] for r in records} == {tasks[0]: 3, tasks[1]: 0}
    for rec in records:
        assert set(rec["metrics"]) == {"exact_match"} and rec["n_samples"] == 2
    config = out["configs"][tasks[0]]
    assert config["doc_to_text"] == "Q: {{input}}\nA:" and config["generation_kwargs"]["until"] == ["</s>", "Q", "\n\n"]
    assert config["metric_list"][0]["regexes_to_ignore"] == [bbh.STRIP]


@needs_shared("data", "bbh")
def test_bbh_groups_hold_every_task_of_the_folder(lm):
    manager = prepare(["engram_bbh_fewshot", "engram_bbh_zeroshot"], lm).task_manager()
    n_files = len(list((SHARED / "data" / "bbh").glob("*.json")))
    for group in ("engram_bbh_fewshot", "engram_bbh_zeroshot"):
        members = manager.task_index[group].cfg["task"]
        assert len(members) == n_files == 27 and all(m in manager.all_subtasks for m in members)


def test_bbh_pack_names_what_it_misses(lm, tmp_path):
    with pytest.raises(FileNotFoundError, match="--bbh-path"):
        prepare(["engram_bbh_fewshot"], lm, TaskOptions(bbh_path=tmp_path))


def test_unknown_pack_name_is_refused_with_the_known_ones(lm):
    with pytest.raises(TaskError, match="engram_world_knowledge"):
        prepare(["engram_nonsense"], lm)
