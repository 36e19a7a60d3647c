import collections
import hashlib
import json
import os
import re
import subprocess
import sys
import time

import pytest

from engram.config import ConfigError
from experiments.synthetic import (ATTRIBUTES, CATEGORIES, DYNAMIC_CATEGORIES, FACT_TEMPLATES, KIND, NAME_PATTERNS,
                                   QUESTION_TEMPLATES, STATIC_CATEGORIES, SyntheticConfig, SyntheticCorpus,
                                   _held_out_text)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
N_TRAIN, N_VAL = 3000, 1500


@pytest.fixture(scope="module")
def corpus():
    return SyntheticCorpus(SyntheticConfig())


@pytest.fixture(scope="module")
def train(corpus):
    return [corpus.document("train", i) for i in range(N_TRAIN)]


@pytest.fixture(scope="module")
def validation(corpus):
    return [corpus.document("validation", i) for i in range(N_VAL)]


@pytest.fixture(scope="module")
def stated_in_train(corpus, train):
    return _stated_facts(corpus, train)


def _lower_first(text):
    return text[:1].lower() + text[1:]


def _sentences(text):
    for line in text.split("\n"):
        line = line.removeprefix("- ")
        yield from re.split(r"(?<=[.?!])\s+", line)


# One alternation over the distinct fact templates (city and guild share their "founded" phrasings), branch i with
# groups s{i} (subject) and v{i} (value), matched once per sentence.
_TEMPLATE_FACTS = collections.defaultdict(list)
for (_kind, _attr), _templates in FACT_TEMPLATES.items():
    for _t in _templates:
        _TEMPLATE_FACTS[_t].append((_kind, _attr))
_BRANCH_FACTS = list(_TEMPLATE_FACTS.values())
_FACT_SENTENCE = re.compile("|".join(
    f"(?P<t{i}>" + re.escape(t).replace(r"\{s\}", f"(?P<s{i}>.+?)").replace(r"\{v\}", f"(?P<v{i}>[^.?!\n]+?)") + "$)"
    for i, t in enumerate(_TEMPLATE_FACTS)))


def _stated_facts(corpus, docs):
    """Every world-fact statement in ``docs`` as (entity, attribute, value as written)."""
    by_name = {_lower_first(e.name): e for e in corpus.entities}
    out = []
    for text, _ in docs:
        for sentence in _sentences(text):
            if m := _FACT_SENTENCE.match(sentence):
                i = int(m.lastgroup[1:])
                if (e := by_name.get(_lower_first(m[f"s{i}"]))) is not None:
                    out += [(e, attr, m[f"v{i}"]) for kind, attr in _BRANCH_FACTS[i] if kind == e.kind]
    return out


def _digest(corpus):
    h = hashlib.sha256()
    for split in ("train", "validation"):
        for i in range(200):
            h.update(repr(corpus.document(split, i)).encode())
    h.update(json.dumps(corpus.questions(50, seed=3)).encode())
    return h.hexdigest()


def test_same_seed_same_documents_and_world():
    a, b = SyntheticCorpus(SyntheticConfig(seed=5)), SyntheticCorpus(SyntheticConfig(seed=5))
    assert [e.name for e in a.entities] == [e.name for e in b.entities] and a.phrases == b.phrases
    assert [a.document("train", i) for i in range(300)] == [b.document("train", i) for i in range(300)]
    stream = a.documents("validation", start=7)
    assert [next(stream) for _ in range(5)] == [b.document("validation", i) for i in range(7, 12)]
    assert a.questions(40, seed=1) == b.questions(40, seed=1)


# The child registers an empty ``engram`` package so that ``engram.config`` loads without the package __init__ (which
# imports torch): the check then takes a fraction of a second instead of several.
_CHILD = """
import sys, types
package = types.ModuleType("engram")
package.__path__ = [{engram!r}]
sys.modules["engram"] = package
from experiments.synthetic import SyntheticConfig, SyntheticCorpus
from tests.experiments.test_synthetic import _digest
print(_digest(SyntheticCorpus(SyntheticConfig())))
"""


def test_identical_across_processes_and_hash_seeds(corpus):
    hash_seed = "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"  # differs from this process's
    child = subprocess.run([sys.executable, "-c", _CHILD.format(engram=os.path.join(REPO, "engram"))], cwd=REPO,
                           env={**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": REPO},
                           capture_output=True, text=True, timeout=60)
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == _digest(corpus)


def test_different_seeds_differ(corpus):
    other = SyntheticCorpus(SyntheticConfig(seed=1))
    assert [e.name for e in other.entities[:20]] != [e.name for e in corpus.entities[:20]]
    assert sum(other.document("train", i) == corpus.document("train", i) for i in range(200)) == 0


def test_train_and_validation_never_share_a_document(corpus, train, validation):
    assert not {t for t, _ in train} & {t for t, _ in validation}
    # Guaranteed, not just likely: every text has one owner side by its hash, and each split only keeps its own.
    assert not any(_held_out_text(t) for t, _ in train) and all(_held_out_text(t) for t, _ in validation)
    assert not {corpus.document("test", i)[0] for i in range(1000)} & {t for t, _ in train}
    with pytest.raises(ValueError):
        corpus.document("", 0)


def test_category_mix_follows_config(train):
    cfg = SyntheticConfig()
    counts = collections.Counter(c for _, c in train)
    assert set(counts) == {c for c, w in cfg.category_weights.items() if w > 0} and set(KIND) == set(CATEGORIES)
    assert set(KIND.values()) == {"static", "dynamic"}
    for half, cats, share in (("static", STATIC_CATEGORIES, cfg.static_fraction),
                              ("dynamic", DYNAMIC_CATEGORIES, 1 - cfg.static_fraction)):
        total = sum(cfg.category_weights[c] for c in cats)
        for c in cats:
            assert KIND[c] == half
            assert counts[c] / N_TRAIN == pytest.approx(share * cfg.category_weights[c] / total, abs=0.025)

    skewed = SyntheticCorpus(SyntheticConfig(static_fraction=0.8, category_weights={"needle": 0, "sayings": 3}))
    counts = collections.Counter(skewed.document("train", i)[1] for i in range(2000))
    assert counts["needle"] == 0
    assert sum(counts[c] for c in STATIC_CATEGORIES) / 2000 == pytest.approx(0.8, abs=0.03)
    assert counts["sayings"] / 2000 == pytest.approx(0.8 * 3 / 5, abs=0.03)
    only_dynamic = SyntheticCorpus(SyntheticConfig(static_fraction=0.0))
    assert all(KIND[only_dynamic.document("train", i)[1]] == "dynamic" for i in range(300))


def test_static_facts_are_stated_the_same_everywhere(corpus, train, validation, stated_in_train):
    stated = stated_in_train + _stated_facts(corpus, validation)
    assert len(stated) > 3000
    for entity, attr, value in stated:
        assert attr in entity.facts, f"{entity.name} has no {attr}, yet a document states one"
        assert _lower_first(value) == _lower_first(entity.facts[attr]), (entity.name, attr, value)
    # Facts recur across documents (so the check above compares repeated statements), in both phrasings.
    repeats = collections.Counter((e.name, a) for e, a, _ in stated)
    assert sum(n > 1 for n in repeats.values()) > 300
    text = "\n".join(t for t, _ in train)
    top = corpus.entities[0]
    for attr, value in top.facts.items():
        for template in FACT_TEMPLATES[top.kind, attr]:
            sentence = template.format(s=top.name, v=value)
            assert sentence[:1].upper() + sentence[1:] in text


def test_names_and_sayings_are_fixed_by_their_first_words(corpus, train):
    pattern_words = {w for patterns in NAME_PATTERNS.values() for p in patterns for w in p.split()}
    owner = {}
    for e in corpus.entities:
        for word in e.name.split():
            if word not in pattern_words:
                assert owner.setdefault(word, e.name) == e.name, f"{word!r} is in two names"
    starts = [" ".join(p.split()[:3]) for p in corpus.phrases]
    assert len(set(starts)) == len(starts) == len(corpus.phrases)
    # Zipf: the most mentioned entities appear far more often than ones ranked a few hundred places lower.
    text = "\n".join(t for t, _ in train)
    head = sum(text.count(e.name) for e in corpus.entities[:10])
    tail = sum(text.count(e.name) for e in corpus.entities[500:510])
    assert head > 10 * max(tail, 1)


def test_questions_are_valid_mmlu_and_grounded_in_training_text(corpus, stated_in_train):
    qs = corpus.questions(400, seed=0)
    assert qs == corpus.questions(400, seed=0) and qs != corpus.questions(400, seed=1)
    assert set(collections.Counter(q["answer"] for q in qs).values()) == {100}
    subjects = {f"{k}_{a}" for k, attrs in ATTRIBUTES.items() for a in attrs}
    for q in qs:
        assert set(q) == {"question", "choices", "answer", "subject"} and q["subject"] in subjects
        assert len(q["choices"]) == 4 and len(set(q["choices"])) == 4 and q["answer"] in range(4)
        kind, attr = q["subject"].split("_", 1)
        assert all(c in corpus.values(kind, attr) for c in q["choices"])

    stated = {(e.name, f"{e.kind}_{a}", v) for e, a, v in stated_in_train}
    for q in corpus.questions(40, seed=2, top=20):
        kind, attr = q["subject"].split("_", 1)
        pattern = re.escape(QUESTION_TEMPLATES[kind, attr]).replace(r"\{s\}", "(?P<s>.+)")
        name = re.fullmatch(pattern, q["question"])["s"]
        assert (name, q["subject"], q["choices"][q["answer"]]) in stated, q
    with pytest.raises(ValueError):
        corpus.questions(10 ** 6)


def _qa_pairs(text):
    return re.findall(r"^Question: (.*)\nAnswer: (.*)$", text, flags=re.M)


def test_dynamic_answers_are_not_predictable_from_a_short_window(train):
    answers = collections.defaultdict(list)
    for text, category in train:
        if category == "context_facts":
            body = text.rsplit("\nQuestion:", text.count("\nQuestion:"))[0]
            for question, answer in _qa_pairs(text):
                assert answer in body  # the answer was bound earlier in this document
                answers[question].append(answer)
    repeated = {q: a for q, a in answers.items() if len(a) >= 4}
    assert len(repeated) >= 10
    # The same question (same preceding words) gets different answers in different documents; a question with a
    # dozen possible values may still repeat its answer by chance now and then.
    assert sum(len(set(a)) > 1 for a in repeated.values()) >= 0.9 * len(repeated)
    # Guessing the most frequent answer of each question (what a lookup of the preceding words can learn) rarely works.
    hits = sum(collections.Counter(a).most_common(1)[0][1] for a in repeated.values())
    assert hits / sum(len(a) for a in repeated.values()) < 0.5


def test_dynamic_documents_are_correct(train):
    seen = collections.Counter()
    for text, category in train:
        if category == "arithmetic":
            for line in text.split("\n")[1:]:
                if m := re.fullmatch(r".* had (\d+) \w+ and found (\d+) more, so .* had (\d+) \w+\.", line):
                    assert int(m[1]) + int(m[2]) == int(m[3])
                else:
                    assert re.fullmatch(r"[\d +\-*=]+", line)
                    assert len({eval(side) for side in line.split(" = ")}) == 1
        elif category == "variables":
            values = {}
            for name, rhs in re.findall(r"^Let (\w+) = (\w+)\.$", text, flags=re.M):
                values[name] = int(rhs) if rhs.isdigit() else values[rhs]
            for question, answer in _qa_pairs(text):
                name = question.removeprefix("What is the value of ").removesuffix("?")
                assert answer == f"{name} is {values[name]}."
        elif category == "multi_hop":
            master = dict(re.findall(r"(\w+ \w+) is the apprentice of (\w+ \w+)\.", text))
            keeps = dict(re.findall(r"(\w+ \w+) keeps an? (\w+) in the workshop\.", text))
            for question, answer in _qa_pairs(text):
                m = re.fullmatch(r"What does ((?:the master of )+)(.+) keep\?", question)
                person = m[2]
                for _ in range(m[1].count("the master of")):
                    person = master[person]
                assert answer.endswith(f"{person} keeps a {keeps[person]}.")
        elif category == "needle":
            (question, answer), = _qa_pairs(text)
            assert answer in text.split("\nQuestion:")[0] and len(text.split()) >= SyntheticConfig().needle_words
        seen[category] += 1
    assert all(seen[c] > 50 for c in ("arithmetic", "variables", "multi_hop", "needle"))


def test_lookup_documents_read_their_list_back_in_another_order():
    corpus = SyntheticCorpus(SyntheticConfig(static_fraction=0.0, category_weights={c: 0 for c in DYNAMIC_CATEGORIES}
                                             | {"lookup": 1}))
    shuffled = 0
    for i in range(50):
        text, category = corpus.document("train", i)
        lines = text.split("\n")
        n = (len(lines) - 2) // 2
        entries, read_back = lines[1:1 + n], lines[2 + n:]
        assert category == "lookup" and 4 <= n <= 12 and len(lines) == 2 * n + 2
        assert all(re.fullmatch(r"[A-Z][a-z]+(:| is)? \d{5}\.?", entry) for entry in entries)
        assert len({e.split()[0].rstrip(":") for e in entries}) == n and sorted(read_back) == sorted(entries)
        shuffled += read_back != entries
    assert shuffled >= 45


# _digest of the default corpus as it was before lookup documents existed: the recorded runs and token caches were
# made from that stream, so a new category must leave it as it is.
DEFAULT_DIGEST = "d7a25d54fc0a00abf9dc3d8e3d8a8baf91ae38563ff17aac7fb80555d23055cb"


def test_the_default_stream_is_the_one_recorded_runs_were_trained_on(corpus):
    assert _digest(corpus) == DEFAULT_DIGEST


def test_needle_length_is_configurable():
    corpus = SyntheticCorpus(SyntheticConfig(static_fraction=0.0, category_weights={c: 0 for c in DYNAMIC_CATEGORIES}
                                             | {"needle": 1}, needle_words=1000))
    lengths = [len(corpus.document("train", i)[0].split()) for i in range(20)]
    assert min(lengths) >= 1000 and max(lengths) < 1100


def test_needle_queries_ask_distinct_hidden_keys():
    corpus = SyntheticCorpus(SyntheticConfig(static_fraction=0.0, category_weights={c: 0 for c in DYNAMIC_CATEGORIES}
                                             | {"needle": 1}, needle_distractors=3, needle_queries=4))
    for i in range(20):
        text = corpus.document("train", i)[0]
        haystack = text.split("\nQuestion:")[0]
        pairs = _qa_pairs(text)
        assert len(pairs) == 4 and len({question for question, _ in pairs}) == 4
        assert all(answer in haystack for _, answer in pairs)


def test_generation_is_fast(corpus):
    start = time.perf_counter()
    for i in range(2000):
        corpus.document("train", 10_000 + i)
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize("kwargs, field", [
    (dict(n_entities=10), "n_entities"),
    (dict(facts_per_entity=5), "facts_per_entity"),
    (dict(n_phrases=0), "n_phrases"),
    (dict(zipf_exponent=-1.0), "zipf_exponent"),
    (dict(static_fraction=1.5), "static_fraction"),
    (dict(category_weights={"poetry": 1.0}), "category_weights"),
    (dict(category_weights={"needle": -1.0}), "category_weights"),
    (dict(category_weights={c: 0.0 for c in STATIC_CATEGORIES}), "category_weights"),
    (dict(bindings_per_doc=1), "bindings_per_doc"),
    (dict(max_hops=0), "max_hops"),
    (dict(max_operand=0), "max_operand"),
    (dict(needle_words=5), "needle_words"),
    (dict(needle_distractors=-1), "needle_distractors"),
    (dict(needle_distractors=2, needle_queries=4), "needle_queries"),
    (dict(needle_queries=0), "needle_queries"),
    (dict(seed=-3), "seed"),
])
def test_config_validation_names_the_field(kwargs, field):
    with pytest.raises(ConfigError) as err:
        SyntheticConfig(**kwargs)
    assert err.value.field == field


def test_config_fills_in_category_weights():
    cfg = SyntheticConfig(category_weights={"sayings": 2})
    assert list(cfg.category_weights) == list(CATEGORIES) and cfg.category_weights["sayings"] == 2.0
    assert SyntheticConfig(static_fraction=1.0, category_weights={c: 0.0 for c in DYNAMIC_CATEGORIES})
