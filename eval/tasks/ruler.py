"""RULER-style long-context tasks, generated locally at any length in tokens of the checkpoint's tokenizer.

Task names (L: the context length in tokens, e.g. ``engram_niah_single_512``):

    engram_niah_single_<L>      one needle (a key and a 7-digit number), asked for that key
    engram_niah_multikey_<L>    four needles with distinct keys, asked for one of them (three distractors)
    engram_niah_multivalue_<L>  four numbers under one key, asked for all four
    engram_niah_multiquery_<L>  four needles with distinct keys, asked for all four (the paper's MQ-NIAH)
    engram_vt_<L>               variable tracking: ``VAR A = n``, ``VAR B = VAR A``, ... (one chain, four hops)
                                spread through the text, asked for every variable that holds n, after one worked
                                example (the paper's VT)
    engram_ruler_<L>            the group of the five
    engram_needle_<L>           not RULER's: the synthetic corpus's own needle documents (three keys with 5-digit
                                codes in filler, one asked for, "The secret code for <key> is" to complete), so that
                                a small model trained on that corpus is asked to retrieve in the form it learned;
                                RULER's prompts are a format it never saw

Needle counts, prompts (with their answer prefixes) and scoring are RULER's (Hsieh et al., 2024), as lm-eval's
``niah_single_1``, ``niah_multikey_1``, ``niah_multivalue``, ``niah_multiquery`` and ``ruler_vt`` set them. What
differs, so that nothing is downloaded: keys are adjective-noun pairs ("quiet-falcon") drawn from the synthetic
corpus's word lists, and the haystack is filler sentences in the synthetic corpus's style. Needles sit at uniformly
random depths (a chain's statements in order). Each prompt plus its task's generation budget fits in L tokens,
filled up to the last whole filler sentence that fits. Scoring: :func:`eval.tasks.scoring.ruler_recall`.
Deterministic in (tokenizer, L, samples, seed).
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from eval.tasks.common import TEMPLATES, TaskError, build_once, json_task, seeded, write_jsonl, write_yaml
from experiments import synthetic
from experiments.tokenizer import Tokenizer

NAME = re.compile(r"^engram_(niah_single|niah_multikey|niah_multivalue|niah_multiquery|vt|ruler|needle)_(\d+)$")
VERSION = 1  # of the generators below: bump when a generated document changes
DEFAULT_SAMPLES = 500  # RULER's


@dataclass(frozen=True)
class Needles:
    """A needle-in-a-haystack configuration: needles with ``keys`` distinct keys, ``values`` numbers per key,
    ``queries`` keys asked about; ``gen_toks`` tokens of answer budget (kept out of the prompt's share of L)."""

    keys: int
    values: int
    queries: int
    gen_toks: int


NIAH = {"niah_single": Needles(1, 1, 1, 32), "niah_multikey": Needles(4, 1, 1, 32),
        "niah_multivalue": Needles(1, 4, 1, 64), "niah_multiquery": Needles(4, 1, 4, 64)}
VT_HOPS, VT_GEN_TOKS = 4, 48
TASKS = (*NIAH, "vt")  # RULER's, the group engram_ruler_<L>
CORPUS_NEEDLE_KEYS, CORPUS_NEEDLE_GEN_TOKS = 3, 16  # the corpus's default: one needle and two distractors

NIAH_TEMPLATE = ("Some special magic numbers are hidden within the following text. Make sure to memorize it. I will "
                 "quiz you about the numbers afterwards.\n{context}\nWhat are all the special magic numbers for "
                 "{query} mentioned in the provided text? The special magic numbers for {query} mentioned in the "
                 "provided text are")
NEEDLE = "One of the special magic numbers for {key} is: {value}."
VT_TEMPLATE = ("Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
               "Question: Find all variables that are assigned the value {value} in the text above. Answer: According "
               "to the chain(s) of variable assignment in the text above, {n} variables are assigned the value "
               "{value}, they are:")
KEY_ADJECTIVES = tuple(dict.fromkeys(synthetic.FILLER_ADJ + synthetic.SAYING_ADJ))
KEY_NOUNS = tuple(dict.fromkeys(synthetic.ANIMALS + synthetic.ITEMS + synthetic.SAYING_NOUN))


def filler_sentence(rng) -> str:
    """A grammatical, fact-free sentence like the synthetic corpus's haystack filler."""
    s = synthetic
    return rng.choice(s.FILLER_PATTERNS).format(
        T=rng.choice(s.FILLER_TIMES), a=rng.choice(s.FILLER_ADJ), n=rng.choice(s.FILLER_NOUN),
        v=rng.choice(s.FILLER_VERB), i=rng.choice(s.FILLER_INTRANSITIVE), d=rng.choice(s.FILLER_ADVERB),
        p=rng.choice(s.FILLER_PLACES))


def insert(fillers: list[str], items: list[str], depths: list[float]) -> list[str]:
    """``fillers`` with each item placed at its relative depth (0 = first, 1 = last); equal places keep item order."""
    out = list(fillers)
    places = [(round(d * len(fillers)), k) for k, d in enumerate(depths)]
    for place, k in sorted(places, reverse=True):  # back to front, so earlier places stay valid
        out.insert(place, items[k])
    return out


def fill(render: Callable[[list[str]], str], budget: int, tokenizer: Tokenizer, rng, what: str) -> str:
    """``render(fillers)`` with as many filler sentences as keep it within ``budget`` tokens.

    Sentences are costed one by one (a byte-level BPE never merges across the space before a word, so costs add up),
    then the exact count of the rendered prompt is checked and sentences are dropped while it is over.
    """
    used = len(tokenizer.encode(render([])))
    if used > budget:
        raise TaskError(f"{what}: the prompt without any filler takes {used} tokens, more than the {budget} it may "
                         "use; ask for a longer length")
    fillers, costs, full = [], [], False
    while not full:
        batch = [filler_sentence(rng) for _ in range(32)]
        for sentence, ids in zip(batch, tokenizer.encode_batch([" " + s for s in batch])):
            if used + len(ids) > budget:
                full = True
                break
            fillers.append(sentence)
            costs.append(len(ids))
            used += len(ids)
    text = render(fillers)
    overflow = len(tokenizer.encode(text)) - budget
    while overflow > 0:
        while overflow > 0 and fillers:
            fillers.pop()
            overflow -= costs.pop()
        text = render(fillers)
        overflow = len(tokenizer.encode(text)) - budget
    return text


def keys(rng, n: int) -> list[str]:
    out: dict[str, None] = {}
    while len(out) < n:
        out[f"{rng.choice(KEY_ADJECTIVES)}-{rng.choice(KEY_NOUNS)}"] = None
    return list(out)


def listing(words: list[str]) -> str:
    """RULER's way of naming several keys: ``a, b, c, and d``."""
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + ", and " + words[-1]


def niah_document(spec: Needles, length: int, tokenizer: Tokenizer, rng, what: str) -> dict:
    names = keys(rng, spec.keys)
    numbers: dict[int, None] = {}
    while len(numbers) < spec.keys * spec.values:
        numbers[rng.randint(1_000_000, 9_999_999)] = None
    values = iter(numbers)
    per_key = {k: [str(next(values)) for _ in range(spec.values)] for k in names}
    needles = [NEEDLE.format(key=k, value=v) for k in names for v in per_key[k]]
    depths = [rng.random() for _ in needles]
    asked = names[:spec.queries]
    query = listing(asked)

    def render(fillers: list[str]) -> str:
        return NIAH_TEMPLATE.format(context=" ".join(insert(fillers, needles, depths)), query=query)

    text = fill(render, length - spec.gen_toks, tokenizer, rng, what)
    return {"input": text, "outputs": [v for k in asked for v in per_key[k]], "length": length}


def variable_chain(rng, letters: int, hops: int) -> tuple[list[str], str, list[str]]:
    """(variables in assignment order, the value, RULER's statements ``VAR X = n``, ``VAR Y = VAR X``, ...)."""
    names: dict[str, None] = {}
    while len(names) < hops + 1:
        names["".join(rng.choices(string.ascii_uppercase, k=letters))] = None
    variables = list(names)
    value = str(rng.randint(10000, 99999))
    statements = [f"VAR {variables[0]} = {value}"] + [f"VAR {b} = VAR {a}" for a, b in zip(variables, variables[1:])]
    return variables, value, statements


def vt_document(length: int, tokenizer: Tokenizer, rng, what: str) -> dict:
    # The worked example, as RULER's: a short chain of three-letter variables in a few sentences, with its answer.
    ex_vars, ex_value, ex_statements = variable_chain(rng, 3, VT_HOPS)
    ex_context = insert([filler_sentence(rng) for _ in range(5)], ex_statements,
                        sorted(rng.random() for _ in ex_statements))
    example = (VT_TEMPLATE.format(context=" ".join(ex_context), value=ex_value, n=VT_HOPS + 1) + " "
               + " ".join(ex_vars) + "\n\n")
    variables, value, statements = variable_chain(rng, 5, VT_HOPS)
    depths = sorted(rng.random() for _ in statements)

    def render(fillers: list[str]) -> str:
        context = " ".join(insert(fillers, statements, depths))
        return example + VT_TEMPLATE.format(context=context, value=value, n=VT_HOPS + 1)

    return {"input": fill(render, length - VT_GEN_TOKS, tokenizer, rng, what), "outputs": variables, "length": length}


def corpus_needle_document(length: int, tokenizer: Tokenizer, rng, what: str) -> dict:
    """A needle document of the synthetic corpus (:data:`experiments.synthetic.NEEDLE`), cut before the code."""
    names: dict[str, None] = {}
    while len(names) < CORPUS_NEEDLE_KEYS:
        names[synthetic.pseudo_word(rng, 2)] = None
    codes: dict[str, None] = {}
    while len(codes) < CORPUS_NEEDLE_KEYS:
        codes[str(rng.randint(10000, 99999))] = None
    needles = [synthetic.NEEDLE.format(key=k, code=c) for k, c in zip(names, codes)]
    depths = [rng.random() for _ in needles]
    asked = rng.randrange(CORPUS_NEEDLE_KEYS)
    key, code = list(names)[asked], list(codes)[asked]
    answer_prefix = synthetic.NEEDLE.split("{code}")[0].format(key=key).rstrip()

    def render(fillers: list[str]) -> str:
        context = " ".join(insert(fillers, needles, depths))
        return f"{context}\n{synthetic.NEEDLE_QUESTION.format(key=key)}{answer_prefix}"

    return {"input": fill(render, length - CORPUS_NEEDLE_GEN_TOKS, tokenizer, rng, what), "outputs": [code],
            "length": length}


def gen_toks(task: str) -> int:
    """The answer budget of ``task``, kept out of the prompt's share of its length."""
    return {"vt": VT_GEN_TOKS, "needle": CORPUS_NEEDLE_GEN_TOKS}.get(task) or NIAH[task].gen_toks


def documents(task: str, length: int, tokenizer: Tokenizer, samples: int, seed: int) -> list[dict]:
    """``samples`` documents of ``task`` at ``length`` tokens, each from its own seeded generator."""
    what = f"engram_{task}_{length}"
    out = []
    for index in range(samples):
        rng = seeded("ruler", VERSION, task, length, seed, index)
        if task == "vt":
            doc = vt_document(length, tokenizer, rng, what)
        elif task == "needle":
            doc = corpus_needle_document(length, tokenizer, rng, what)
        else:
            doc = niah_document(NIAH[task], length, tokenizer, rng, what)
        out.append({**doc, "index": index})
    return out


def build_task(task: str, length: int, tokenizer: Tokenizer, samples: int | None = None, seed: int = 0) -> Path:
    """The folder of ``engram_<task>_<length>``: its task YAML and its JSONL data."""
    samples = samples or DEFAULT_SAMPLES
    name = f"engram_{task}_{length}"

    def write(out: Path, final: Path) -> None:
        write_jsonl(out / "test.jsonl", documents(task, length, tokenizer, samples, seed))
        write_yaml(out / f"{name}.yaml", json_task(
            TEMPLATES / "ruler_template.yaml", name, {"test": str(final / "test.jsonl")},
            generation_kwargs={"do_sample": False, "temperature": 0.0, "until": [], "max_gen_toks": gen_toks(task)},
            metadata={"version": VERSION, "length": length, "samples": samples, "seed": seed}))

    key = {"version": VERSION, "task": task, "length": length, "tokenizer": tokenizer.fingerprint(),
           "samples": samples, "seed": seed}
    return build_once(name, key, write)


def build(name: str, tokenizer: Tokenizer, samples: int | None = None, seed: int = 0) -> list[Path]:
    """The folders that serve ``name`` (a task, or the group ``engram_ruler_<L>`` with its five tasks)."""
    match = NAME.match(name)
    if match is None:
        raise TaskError(f"{name} is not a RULER-style task name (engram_<task>_<length>, task one of "
                         f"{', '.join(TASKS)}, ruler or needle)")
    task, length = match.group(1), int(match.group(2))
    if task != "ruler":
        return [build_task(task, length, tokenizer, samples, seed)]
    folders = [build_task(t, length, tokenizer, samples, seed) for t in TASKS]
    group = {"group": name, "task": [f"engram_{t}_{length}" for t in TASKS],
             "aggregate_metric_list": [{"metric": "recall", "aggregation": "mean", "weight_by_size": False}],
             "metadata": {"version": VERSION}}
    return [*folders, build_once(name, {"version": VERSION, "length": length},
                                 lambda out, final: write_yaml(out / f"{name}.yaml", group))]
