"""The embedded default corpus: synthetic English-like text, generated on the fly, deterministic from a seed.

It holds both halves of the paper's "linguistic duality" (DESIGN.md, "Data"), one half per document:

* **static** documents state a fixed *world*: many invented multi-word entities (people, cities, guilds, realms) with
  Zipf-distributed mention frequencies, each with a few facts (attribute -> value) that read the same in every document
  that states them, plus fixed sayings. Every word of a name is unique to it, so once a name or saying has begun its
  continuation is fixed by the few tokens before it: what a hashed N-gram lookup can serve.
* **dynamic** documents bind values only in their own context (random per document, queried later in it), do arithmetic,
  track variables, follow multi-hop references, find needles in long filler and (off by default) look up codes in a
  list read back shuffled: no lookup of a short window helps.

The world is built from ``cfg.seed`` alone and shared by every split; documents are drawn from a stream per
(seed, split, index), and each possible text is owned by the training side or the held-out side by its hash, so
"train" and "validation" (or any other held-out name) never share a document but speak of the same world. Every random
choice goes through an explicitly seeded ``random.Random`` (seeds derived with BLAKE2b, never ``hash()``), and no set is
ever iterated, so the text is identical across processes and ``PYTHONHASHSEED``.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import math
import random
from dataclasses import dataclass, field
from typing import Iterator

from engram.config import ConfigError

STATIC_CATEGORIES = ("biography", "records", "sayings")
DYNAMIC_CATEGORIES = ("context_facts", "arithmetic", "variables", "multi_hop", "needle", "lookup")
CATEGORIES = STATIC_CATEGORIES + DYNAMIC_CATEGORIES
KIND = {**{c: "static" for c in STATIC_CATEGORIES}, **{c: "dynamic" for c in DYNAMIC_CATEGORIES}}
# Needle documents are several times longer than the others, so they get half a share by default. Lookup documents
# came later and are off by default, which leaves the default stream (and every run recorded on it) as it was: a
# category of weight 0 at the end of its half changes no draw.
DEFAULT_CATEGORY_WEIGHTS = {**{c: 1.0 for c in CATEGORIES}, "needle": 0.5, "lookup": 0.0}
# A needle document: these sentences hidden in filler, then the question and, as its answer, the asked needle
# (eval.tasks.ruler's engram_needle_<L> asks the same way).
NEEDLE = "The secret code for {key} is {code}."
NEEDLE_QUESTION = "Question: What is the secret code for {key}?\nAnswer: "
# A lookup document: a titled list of LOOKUP_ENTRIES keys with codes, one per line in one of the entry forms, then the
# check line and the same entries shuffled. With a word between key and code, as in a needle, the code is
# copied from the place after the key's earlier mention, not from the token next to it.
LOOKUP_ENTRIES = (4, 12)
LOOKUP_FORMS = ("{key} {code}", "{key}: {code}", "{key} is {code}.")
LOOKUP_TITLES = ("The clerk of {city} wrote down the codes:", "Codes kept at the gate of {city}:",
                 "The ledger of {city} lists:", "Passwords of the guards of {city}:")
LOOKUP_CHECKS = ("Read back:", "Checked again:", "The same codes, in another order:")

# Every possible text is owned by one side, by its hash: training ("train") or held-out (any other split name). A
# document drawn for the other side is redrawn, so no text is ever both a training and a held-out document. The
# held-out side owns 1 / HELD_OUT_SHARE of all texts, which is what a held-out document costs in redraws on average.
TRAIN_SPLIT = "train"
HELD_OUT_SHARE = 4

# World schema: every entity kind has four attributes; an entity states ``facts_per_entity`` of them.
ENTITY_KINDS = ("person", "city", "guild", "realm")
KIND_SHARES = {"person": 0.5, "city": 0.25, "guild": 0.15, "realm": 0.10}
ATTRIBUTES = {
    "person": ("birthplace", "occupation", "birth_year", "guild"),
    "city": ("realm", "founded", "export", "river"),
    "guild": ("founded", "seat", "founder", "emblem"),
    "realm": ("capital", "language", "currency", "ruler"),
}
# Two phrasings per fact; within a kind no template is a prefix of another, so a sentence names one fact unambiguously.
FACT_TEMPLATES = {
    ("person", "birthplace"): ("{s} was born in {v}.", "{s} is a native of {v}."),
    ("person", "occupation"): ("{s} worked as a {v}.", "By trade, {s} was a {v}."),
    ("person", "birth_year"): ("{s} came into the world in {v}.", "The birth of {s} is recorded in {v}."),
    ("person", "guild"): ("{s} is a member of {v}.", "{s} belongs to {v}."),
    ("city", "realm"): ("{s} lies in {v}.", "{s} is a city of {v}."),
    ("city", "founded"): ("{s} was founded in {v}.", "The founding of {s} dates to {v}."),
    ("city", "export"): ("{s} is known for its {v}.", "Traders come to {s} for its {v}."),
    ("city", "river"): ("{s} stands on the river {v}.", "The river {v} flows through {s}."),
    ("guild", "founded"): ("{s} was founded in {v}.", "The founding of {s} dates to {v}."),
    ("guild", "seat"): ("{s} has its seat in {v}.", "{s} is headquartered in {v}."),
    ("guild", "founder"): ("{s} was established by {v}.", "The founder of {s} was {v}."),
    ("guild", "emblem"): ("The emblem of {s} is {v}.", "{s} bears {v} on its banner."),
    ("realm", "capital"): ("The capital of {s} is {v}.", "{v} is the capital of {s}."),
    ("realm", "language"): ("The people of {s} speak {v}.", "The language of {s} is {v}."),
    ("realm", "currency"): ("The coin of {s} is the {v}.", "Merchants in {s} pay with the {v}."),
    ("realm", "ruler"): ("{s} is ruled by {v}.", "The ruler of {s} is {v}."),
}
QUESTION_TEMPLATES = {
    ("person", "birthplace"): "Where was {s} born?",
    ("person", "occupation"): "What was the trade of {s}?",
    ("person", "birth_year"): "In which year was {s} born?",
    ("person", "guild"): "Which guild is {s} a member of?",
    ("city", "realm"): "In which realm does {s} lie?",
    ("city", "founded"): "In which year was {s} founded?",
    ("city", "export"): "What is {s} known for?",
    ("city", "river"): "On which river does {s} stand?",
    ("guild", "founded"): "In which year was {s} founded?",
    ("guild", "seat"): "In which city does {s} have its seat?",
    ("guild", "founder"): "Who established {s}?",
    ("guild", "emblem"): "What is the emblem of {s}?",
    ("realm", "capital"): "What is the capital of {s}?",
    ("realm", "language"): "What language do the people of {s} speak?",
    ("realm", "currency"): "What is the coin of {s}?",
    ("realm", "ruler"): "Who rules {s}?",
}
NAME_PATTERNS = {
    "city": ("{w}", "{w}", "Port {w}", "Fort {w}", "Saint {w}", "{w} Crossing"),
    "guild": ("the Order of {w}", "the Guild of {w}", "the {w} Company", "the Brotherhood of {w}"),
    "realm": ("{w}", "the Kingdom of {w}", "the Duchy of {w}", "the Free State of {w}"),
}
YEAR_RANGES = {"birth_year": (1100, 1850), "founded": (300, 1700)}

OCCUPATIONS = ("blacksmith", "cartographer", "weaver", "potter", "baker", "tanner", "mason", "scribe", "physician",
               "sailor", "merchant", "brewer", "carpenter", "jeweller", "glassblower", "shepherd", "fisherman",
               "miller", "cooper", "chandler", "locksmith", "bookbinder", "herbalist", "tailor", "saddler",
               "wheelwright", "falconer", "minstrel", "painter", "sculptor", "judge", "priest", "soldier", "captain",
               "healer", "teacher", "farmer", "hunter", "navigator", "poet")
GOODS = ("amber", "salt", "wool", "silk", "copper", "timber", "honey", "pearls", "wine", "cheese", "iron", "glass",
         "linen", "spices", "furs", "marble", "tin", "indigo", "barley", "olives", "leather", "paper", "rope", "tea")
COLOURS = ("silver", "golden", "black", "white", "red", "green", "blue", "grey", "crimson", "violet", "brown", "yellow")
ANIMALS = ("heron", "wolf", "stag", "falcon", "bear", "lion", "serpent", "raven", "boar", "hare", "owl", "salmon")
ITEMS = ("lantern", "compass", "map", "key", "letter", "dagger", "flute", "ring", "book", "candle", "rope", "coin",
         "mirror", "feather", "bell", "scroll", "shield", "cup", "hammer", "basket")
COUNTABLES = ("apples", "coins", "arrows", "letters", "sheep", "candles", "barrels", "books", "nails", "eggs")

# Fixed sayings: built from these words, unique in their first three words, so a saying's start fixes its end.
SAYING_PATTERNS = ("{a} {n} {v} the {m}", "no {n} {v} {A} {m}", "the {n} that {v} the {m} is {a}",
                   "{A} {n} {v} more than {M}")
SAYING_ADJ = ("slow", "quiet", "old", "cold", "hungry", "bright", "crooked", "patient", "idle", "greedy", "empty",
              "heavy", "small", "proud", "sharp", "borrowed", "broken", "late", "early", "silent")
SAYING_NOUN = ("water", "stone", "wolf", "river", "candle", "tongue", "hand", "field", "bell", "road", "crow", "ember",
               "harvest", "bridge", "lantern", "sword", "oar", "thread", "coin", "cloud", "hearth", "seed", "tide",
               "kettle", "apple", "bee", "door", "root", "key", "mill")
SAYING_VERB = ("breaks", "feeds", "finds", "outlasts", "warms", "sinks", "mends", "buys", "wakes", "fills", "keeps",
               "follows", "calls", "forgets", "carries", "turns")
SAYING_FRAMES = ("As the old saying goes, {p}.", "People in {city} like to say that {p}.",
                 "{person} was fond of saying that {p}.", "My grandmother always told me that {p}.",
                 "Remember that {p}.", "Every child in {city} learns that {p}.")

# Neutral filler: grammatical, fact-free sentences (biography padding, needle haystacks).
FILLER_TIMES = ("In the morning", "By noon", "At dusk", "Later that day", "In spring", "After the rain", "That winter",
                "Before dawn", "On market day", "At midnight")
FILLER_ADJ = ("tired", "young", "grumpy", "quiet", "cheerful", "careful", "weary", "curious", "tall", "nervous",
              "patient", "lonely", "busy", "wet", "sleepy")
FILLER_NOUN = ("merchant", "farmer", "traveller", "dog", "cart", "boat", "stranger", "guard", "child", "horse",
               "fisherman", "messenger", "pilgrim", "cat", "soldier")
FILLER_VERB = ("passed", "crossed", "watched", "followed", "left", "reached", "circled", "avoided", "cleaned",
               "painted")
FILLER_INTRANSITIVE = ("waited", "rested", "sang", "walked", "slept", "worked", "laughed", "argued", "lingered")
FILLER_ADVERB = ("slowly", "quietly", "for a while", "without a word", "as usual", "once more", "all day")
FILLER_PLACES = ("the road", "the market", "the harbour", "the hills", "the old bridge", "the mill", "the square",
                 "the gate", "the orchard", "the well", "the chapel", "the river bank")
FILLER_PATTERNS = ("{T}, a {a} {n} {v} {p}.", "The {n} {i} {d} near {p}.", "A {a} wind blew over {p}.",
                   "{T}, the {n} {i} {d}.", "Nobody {v} {p} that day.", "The {a} {n} {v} {p} and {i} {d}.")

_ONSETS = ("b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr", "st", "th",
           "tr", "c")
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "ai", "ea")
_CODAS = ("", "", "", "", "", "", "n", "r", "l", "s", "m", "nd", "rch", "th")


@dataclass
class SyntheticConfig:
    """The synthetic corpus: size of the world, mix of the two halves, difficulty of the dynamic half.

    Attributes:
        n_entities: entities in the world, split over people (50 %), cities (25 %), guilds (15 %), realms (10 %).
        facts_per_entity: attributes (of the kind's four) each entity has; these are the memorisable facts.
        n_phrases: fixed sayings in the world.
        zipf_exponent: s in P(rank r) ~ 1 / r^s for entity and saying mentions (0 = uniform).
        static_fraction: probability that a document is static (world facts, sayings) rather than dynamic; the
            lever that moves the corpus along the memory/computation trade-off. A fraction of documents, not tokens.
        category_weights: relative weight of each category within its half; categories left out keep their default
            (1.0, needle 0.5, lookup 0). A weight of 0 removes a category. Lookup documents are the lever for
            retrieval: most of their tokens can only be predicted by copying from the context, which is what a
            model must learn before it can find a needle (a few percent of copyable tokens, as in needle documents,
            were not enough for the small models of eval_synthetic at 5e7 tokens).
        bindings_per_doc: how much a dynamic document binds in context: the people of context_facts and multi_hop
            (at least 3 there) and twice the number of variable chains (at least 2 chains).
        max_hops: longest chain a dynamic document asks to follow: assignments after the first in a variable chain,
            apprentice links in a multi-hop question.
        max_operand: largest number added or subtracted, and largest value a variable is given (products multiply
            factors 2..12).
        needle_words: length in words of a needle document's haystack.
        needle_distractors: other keys with their own codes hidden in the same haystack (multi-key retrieval).
        needle_queries: keys asked about after the haystack, each in its own question and answer (multi-query
            retrieval); at most 1 + needle_distractors. Every answer copies a code from the haystack, so more
            queries give in-context copying a larger share of the loss.
        seed: builds the world and seeds every document stream.
    """

    n_entities: int = 1000
    facts_per_entity: int = 3
    n_phrases: int = 200
    zipf_exponent: float = 1.0
    static_fraction: float = 0.5
    category_weights: dict[str, float] = field(default_factory=dict)
    bindings_per_doc: int = 4
    max_hops: int = 3
    max_operand: int = 99
    needle_words: int = 300
    needle_distractors: int = 2
    needle_queries: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        def check(ok: bool, name: str, reason: str) -> None:
            if not ok:
                raise ConfigError(name, reason)

        check(self.n_entities >= 40, "n_entities", f"must be >= 40 (four of each kind), got {self.n_entities}")
        check(1 <= self.facts_per_entity <= 4, "facts_per_entity", f"must be in 1..4, got {self.facts_per_entity}")
        check(1 <= self.n_phrases <= 2000, "n_phrases", f"must be in 1..2000, got {self.n_phrases}")
        check(math.isfinite(self.zipf_exponent) and self.zipf_exponent >= 0, "zipf_exponent",
              f"must be a finite number >= 0, got {self.zipf_exponent}")
        check(0.0 <= self.static_fraction <= 1.0, "static_fraction", f"must be in [0, 1], got {self.static_fraction}")
        for name, weight in self.category_weights.items():
            check(name in KIND, "category_weights", f"unknown category {name!r} (known: {', '.join(CATEGORIES)})")
            number = not isinstance(weight, bool) and isinstance(weight, (int, float))
            check(number and math.isfinite(weight) and weight >= 0, "category_weights",
                  f"weight of {name!r} must be a finite number >= 0, got {weight!r}")
        weights = {**DEFAULT_CATEGORY_WEIGHTS, **self.category_weights}
        self.category_weights = {c: float(weights[c]) for c in CATEGORIES}
        for half, cats, share in (("static", STATIC_CATEGORIES, self.static_fraction),
                                  ("dynamic", DYNAMIC_CATEGORIES, 1.0 - self.static_fraction)):
            check(share == 0 or sum(self.category_weights[c] for c in cats) > 0, "category_weights",
                  f"every {half} category has weight 0 but static_fraction={self.static_fraction} asks for {half} ones")
        check(2 <= self.bindings_per_doc <= 16, "bindings_per_doc", f"must be in 2..16, got {self.bindings_per_doc}")
        check(self.max_hops >= 1, "max_hops", f"must be >= 1, got {self.max_hops}")
        check(self.max_operand >= 1, "max_operand", f"must be >= 1, got {self.max_operand}")
        check(self.needle_words >= 20, "needle_words", f"must be >= 20, got {self.needle_words}")
        check(self.needle_distractors >= 0, "needle_distractors", f"must be >= 0, got {self.needle_distractors}")
        check(1 <= self.needle_queries <= 1 + self.needle_distractors, "needle_queries",
              f"must be in 1..{1 + self.needle_distractors} (the needles hidden), got {self.needle_queries}")
        check(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")


@dataclass
class Entity:
    """One thing of the world: its name, kind, mention rank (0 = most frequent) and facts (attribute -> value)."""

    name: str
    kind: str
    rank: int
    facts: dict[str, str]


def _derive(*parts: object) -> int:
    """A 64-bit seed from its parts, the same in every process (BLAKE2b, not the salted ``hash()``)."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _choose(rng: random.Random, options):
    """``rng.choice`` at half the cost: one float draw (its bias over lists this short is below 1e-12)."""
    return options[int(rng.random() * len(options))]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _held_out_text(text: str) -> bool:
    """Whether ``text`` belongs to the held-out side: a quarter of all texts, picked by their BLAKE2b hash."""
    return hashlib.blake2b(text.encode(), digest_size=1).digest()[0] % HELD_OUT_SHARE == 0


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def pseudo_word(rng: random.Random, syllables: int) -> str:
    parts = []
    for i in range(syllables):
        onset = "" if i == 0 and rng.random() < 0.2 else _choose(rng, _ONSETS)
        parts.append(onset + _choose(rng, _VOWELS) + _choose(rng, _CODAS))
    return "".join(parts).capitalize()


class _Zipf:
    """Draws items with P(rank r) ~ 1 / (r + 1)^s by bisecting the cumulative weights (O(log n) per draw)."""

    def __init__(self, items: list, exponent: float):
        self.items = items
        self.cum = list(itertools.accumulate((r + 1) ** -exponent for r in range(len(items))))

    def __call__(self, rng: random.Random):
        return self.items[bisect.bisect_right(self.cum, rng.random() * self.cum[-1])]


class SyntheticCorpus:
    """The world built from ``cfg.seed`` and an endless, indexable stream of documents per split."""

    CATEGORIES = CATEGORIES
    KIND = KIND

    def __init__(self, cfg: SyntheticConfig | None = None):
        self.cfg = cfg or SyntheticConfig()
        rng = random.Random(_derive(self.cfg.seed, "world"))
        self._used_words: dict[str, None] = {}  # every invented word, so no name shares a word with another
        self.entities: list[Entity] = self._build_entities(rng)
        self.phrases: list[str] = self._build_phrases(rng)
        self.by_name = {e.name: e for e in self.entities}
        self._pick = _Zipf(self.entities, self.cfg.zipf_exponent)
        self._pick_kind = {k: _Zipf([e for e in self.entities if e.kind == k], self.cfg.zipf_exponent)
                           for k in ENTITY_KINDS}
        self._pick_phrase = _Zipf(self.phrases, self.cfg.zipf_exponent)
        weights = self.cfg.category_weights
        self._halves = [(cats, [weights[c] for c in cats]) for cats in (STATIC_CATEGORIES, DYNAMIC_CATEGORIES)]
        self._render = {c: getattr(self, f"_{c}") for c in CATEGORIES}

    # ----------------------------------------------------------------------------------------------------------
    # The world

    def _word(self, rng: random.Random, lo: int = 2, hi: int = 3) -> str:
        while True:
            word = pseudo_word(rng, rng.randint(lo, hi))
            if 4 <= len(word) <= 9 and word not in self._used_words:
                self._used_words[word] = None
                return word

    def _build_entities(self, rng: random.Random) -> list[Entity]:
        n = self.cfg.n_entities
        counts = {k: max(4, int(n * KIND_SHARES[k])) for k in ("city", "guild", "realm")}
        counts = {"person": n - sum(counts.values()), **counts}
        names = {"person": [f"{self._word(rng)} {self._word(rng)}" for _ in range(counts["person"])]}
        for kind in ("city", "guild", "realm"):
            names[kind] = [_choose(rng, NAME_PATTERNS[kind]).format(w=self._word(rng)) for _ in range(counts[kind])]
        rivers = [self._word(rng) for _ in range(max(4, counts["city"] // 4))]
        n_languages = max(4, counts["realm"] // 2)
        languages = [self._word(rng) + _choose(rng, ("ish", "ic", "i", "ese")) for _ in range(n_languages)]
        coins = [self._word(rng, 1, 2).lower() for _ in range(max(4, counts["realm"] // 2))]
        # Every realm gets at least one city, so its capital can be one of its own cities.
        realm_of = {c: (names["realm"][i] if i < counts["realm"] else _choose(rng, names["realm"]))
                    for i, c in enumerate(names["city"])}
        capital = {}
        for city, realm in realm_of.items():
            capital.setdefault(realm, city)

        years = {attr: tuple(str(y) for y in range(lo, hi + 1)) for attr, (lo, hi) in YEAR_RANGES.items()}
        # The values each attribute draws from: also the distractor pool of its questions.
        emblems = [f"a {colour} {animal}" for colour in COLOURS for animal in ANIMALS]
        domains = {
            ("person", "birthplace"): names["city"], ("person", "occupation"): OCCUPATIONS,
            ("person", "birth_year"): years["birth_year"], ("person", "guild"): names["guild"],
            ("city", "realm"): names["realm"], ("city", "founded"): years["founded"],
            ("city", "export"): GOODS, ("city", "river"): rivers,
            ("guild", "founded"): years["founded"], ("guild", "seat"): names["city"],
            ("guild", "founder"): names["person"], ("guild", "emblem"): emblems,
            ("realm", "capital"): names["city"], ("realm", "language"): languages, ("realm", "currency"): coins,
            ("realm", "ruler"): names["person"],
        }
        self._domains = {key: tuple(pool) for key, pool in domains.items()}
        linked = {("city", "realm"): realm_of, ("realm", "capital"): capital}  # the two facts that must agree
        entities = []
        for kind in ENTITY_KINDS:
            for name in names[kind]:
                attrs = sorted(rng.sample(range(4), self.cfg.facts_per_entity))
                facts = {}
                for attr in (ATTRIBUTES[kind][a] for a in attrs):
                    key = (kind, attr)
                    facts[attr] = linked[key][name] if key in linked else _choose(rng, self._domains[key])
                entities.append(Entity(name, kind, 0, facts))
        # Frequency rank is a random permutation, so how often a thing is mentioned says nothing about its kind.
        rng.shuffle(entities)
        for rank, entity in enumerate(entities):
            entity.rank = rank
        return entities

    def _build_phrases(self, rng: random.Random) -> list[str]:
        phrases, starts = [], {}
        while len(phrases) < self.cfg.n_phrases:
            noun, other = rng.sample(SAYING_NOUN, 2)
            adj = _choose(rng, SAYING_ADJ)
            phrase = _choose(rng, SAYING_PATTERNS).format(a=adj, A=f"{_article(adj)} {adj}", n=noun, m=other,
                                                        M=f"{_article(other)} {other}", v=_choose(rng, SAYING_VERB))
            start = " ".join(phrase.split()[:3])
            if start not in starts:
                starts[start] = None
                phrases.append(phrase)
        return phrases

    def values(self, kind: str, attribute: str) -> tuple[str, ...]:
        """Every value ``attribute`` of a ``kind`` could take in this world (the distractor pool of its questions)."""
        return self._domains[kind, attribute]

    # ----------------------------------------------------------------------------------------------------------
    # Documents

    def document(self, split: str, index: int) -> tuple[str, str]:
        """Document ``index`` of ``split``: ``(text, category)``, a pure function of (seed, split, index)."""
        if not isinstance(split, str) or not split:
            raise ValueError(f"split must be a non-empty string, got {split!r}")
        if index < 0:
            raise ValueError(f"index must be >= 0, got {index}")
        rng = random.Random(_derive(self.cfg.seed, "doc", split, index))
        held_out = split != TRAIN_SPLIT
        while True:
            cats, weights = self._halves[0 if rng.random() < self.cfg.static_fraction else 1]
            category = rng.choices(cats, weights)[0]
            text = self._render[category](rng)
            # Independent streams alone let a short, frequent document (a top entity's two facts) recur in both
            # splits now and then; ownership by the text's own hash rules that out whatever the stream draws.
            if _held_out_text(text) == held_out:
                return text, category

    def documents(self, split: str, start: int = 0) -> Iterator[tuple[str, str]]:
        """The endless stream ``document(split, start), document(split, start + 1), ...``."""
        for index in itertools.count(start):
            yield self.document(split, index)

    def _fact(self, rng: random.Random, entity: Entity, attribute: str) -> str:
        template = _choose(rng, FACT_TEMPLATES[entity.kind, attribute])
        return _cap(template.format(s=entity.name, v=entity.facts[attribute]))

    def _filler(self, rng: random.Random) -> str:
        return _choose(rng, FILLER_PATTERNS).format(
            T=_choose(rng, FILLER_TIMES), a=_choose(rng, FILLER_ADJ), n=_choose(rng, FILLER_NOUN),
            v=_choose(rng, FILLER_VERB), i=_choose(rng, FILLER_INTRANSITIVE), d=_choose(rng, FILLER_ADVERB),
            p=_choose(rng, FILLER_PLACES))

    def _saying(self, rng: random.Random) -> str:
        return _choose(rng, SAYING_FRAMES).format(p=self._pick_phrase(rng), city=self._pick_kind["city"](rng).name,
                                                person=self._pick_kind["person"](rng).name)

    def _people(self, rng: random.Random, k: int) -> list[str]:
        """``k`` distinct people drawn by mention frequency."""
        people: dict[str, None] = {}
        for _ in range(10 * k):
            people[self._pick_kind["person"](rng).name] = None
            if len(people) == k:
                return list(people)
        # A very steep Zipf exponent makes distinct draws rare: complete the set with the most mentioned people.
        for person in self._pick_kind["person"].items:
            people.setdefault(person.name, None)
            if len(people) == k:
                break
        return list(people)

    # Static half: world facts and sayings, always stated the same way.

    def _biography(self, rng: random.Random) -> str:
        entity = self._pick(rng)
        attrs = list(entity.facts)
        rng.shuffle(attrs)
        attrs = attrs[:rng.randint(min(2, len(attrs)), len(attrs))]
        sentences = [self._fact(rng, entity, a) for a in attrs]
        for a in attrs:  # facts of the things this entity points at (its city, its guild, its ruler, ...)
            linked = self.by_name.get(entity.facts[a])
            if linked is not None and rng.random() < 0.5:
                sentences.append(self._fact(rng, linked, _choose(rng, list(linked.facts))))
        if rng.random() < 0.3:
            sentences.append(self._saying(rng))
        for _ in range(rng.randint(1, 2)):
            sentences.insert(rng.randint(1, len(sentences)), self._filler(rng))
        return f"{_cap(entity.name)}\n" + " ".join(sentences)

    def _records(self, rng: random.Random) -> str:
        title = _choose(rng, ("From the almanac of the realms:", "Entries in the old registry:",
                              "Notes of a traveller:", "From the chronicle:"))
        lines = []
        for _ in range(rng.randint(3, 6)):
            entity = self._pick(rng)
            lines.append("- " + self._fact(rng, entity, _choose(rng, list(entity.facts))))
        return "\n".join([title, *lines])

    def _sayings(self, rng: random.Random) -> str:
        sentences = [self._saying(rng) for _ in range(rng.randint(2, 4))]
        sentences.insert(rng.randint(0, len(sentences)), self._filler(rng))
        return " ".join(sentences)

    # Dynamic half: values bound in this document only; the answer is elsewhere in the context, never in a window.

    def _context_facts(self, rng: random.Random) -> str:
        bindings = {
            "room": ("{s} is staying in room {v}.", "Which room is {s} staying in?",
                     lambda: str(rng.randint(100, 999))),
            "item": ("{s} is carrying a {v}.", "What is {s} carrying?", lambda: _choose(rng, ITEMS)),
            "cloak": ("{s} is wearing a {v} cloak.", "What colour is the cloak of {s}?", lambda: _choose(rng, COLOURS)),
            "table": ("{s} sits at table {v}.", "At which table does {s} sit?", lambda: str(rng.randint(1, 40))),
        }
        statements = []
        for person in self._people(rng, self.cfg.bindings_per_doc):
            for key in rng.sample(list(bindings), rng.randint(1, 2)):
                template, question, value = bindings[key]
                statements.append((template.format(s=person, v=value()), question.format(s=person)))
        rng.shuffle(statements)
        intro = f"The inn at {self._pick_kind['city'](rng).name} was busy that night. {self._filler(rng)}"
        asked = rng.sample(statements, min(len(statements), rng.randint(1, 3)))
        queries = [f"Question: {q}\nAnswer: {s}" for s, q in asked]
        return "\n".join([intro, " ".join(s for s, _ in statements), *queries])

    def _arithmetic(self, rng: random.Random) -> str:
        top = self.cfg.max_operand
        lines = [_choose(rng, ("Arithmetic practice.", "Worked sums:", "Some calculations:",
                               "Exercises with answers:"))]
        for _ in range(rng.randint(3, 6)):
            a, b = rng.randint(0, top), rng.randint(0, top)
            form = rng.randrange(5)
            if form == 0:
                lines.append(f"{a} + {b} = {a + b}")
            elif form == 1:
                a, b = max(a, b), min(a, b)
                lines.append(f"{a} - {b} = {a - b}")
            elif form == 2:
                a, b = rng.randint(2, 12), rng.randint(2, 12)
                lines.append(f"{a} * {b} = {a * b}")
            elif form == 3:  # two steps, the intermediate result written out
                c = rng.randint(0, a + b)
                lines.append(f"{a} + {b} - {c} = {a + b} - {c} = {a + b - c}")
            else:
                person, things = self._people(rng, 1)[0], _choose(rng, COUNTABLES)
                lines.append(f"{person} had {a} {things} and found {b} more, so {person} had {a + b} {things}.")
        return "\n".join(lines)

    def _variables(self, rng: random.Random) -> str:
        n_chains = max(2, self.cfg.bindings_per_doc // 2)
        names: dict[str, None] = {}
        while len(names) < n_chains * (self.cfg.max_hops + 1):
            names[pseudo_word(rng, 2).upper()] = None
        pool = iter(names)
        chains = []  # each chain: its variables in assignment order and its value
        for _ in range(n_chains):
            chain = [next(pool) for _ in range(rng.randint(2, self.cfg.max_hops + 1))]
            chains.append((chain, rng.randint(0, self.cfg.max_operand)))
        queues = [[f"Let {c[0]} = {v}."] + [f"Let {y} = {x}." for x, y in zip(c, c[1:])] for c, v in chains]
        lines = ["Keep track of the variables."]
        while any(queues):  # interleave the chains, each in its own order
            lines.append(_choose(rng, [q for q in queues if q]).pop(0))
        for chain, value in rng.sample(chains, rng.randint(1, 2)):
            lines.append(f"Question: What is the value of {chain[-1]}?\nAnswer: {chain[-1]} is {value}.")
        return "\n".join(lines)

    def _multi_hop(self, rng: random.Random) -> str:
        people = self._people(rng, max(3, self.cfg.bindings_per_doc))
        keeps = {p: _choose(rng, ITEMS) for p in people}
        # One apprenticeship chain: people[i] is the apprentice of people[i + 1]; the last has no master.
        statements = [f"{a} is the apprentice of {b}." for a, b in zip(people, people[1:])]
        statements += [f"{p} keeps a {item} in the workshop." for p, item in keeps.items()]
        rng.shuffle(statements)
        lines = [" ".join(statements)]
        for _ in range(rng.randint(1, 2)):
            hops = rng.randint(1, min(self.cfg.max_hops, len(people) - 1))
            start = rng.randrange(len(people) - hops)
            path = people[start:start + hops + 1]
            who = "the master of " * hops + path[0]
            steps = [f"the master of {a} is {b}" for a, b in zip(path, path[1:])]
            lines.append(f"Question: What does {who} keep?\nAnswer: {_cap(', '.join(steps))}, "
                         f"and {path[-1]} keeps a {keeps[path[-1]]}.")
        return "\n".join(lines)

    def _needle(self, rng: random.Random) -> str:
        keys: dict[str, None] = {}
        while len(keys) < 1 + self.cfg.needle_distractors:
            keys[pseudo_word(rng, 2)] = None
        needles = [NEEDLE.format(key=k, code=rng.randint(10000, 99999)) for k in keys]
        sentences, words = [], 0
        while words < self.cfg.needle_words:
            sentences.append(self._filler(rng))
            words += sentences[-1].count(" ") + 1
        for needle in needles:
            sentences.insert(rng.randint(0, len(sentences)), needle)
        names = list(keys)
        # one query draws as the corpus always has, so the default stream is unchanged
        asked = [_choose(rng, names)] if self.cfg.needle_queries == 1 else rng.sample(names, self.cfg.needle_queries)
        answers = "\n".join(f"{NEEDLE_QUESTION.format(key=key)}{needles[names.index(key)]}" for key in asked)
        return f"{' '.join(sentences)}\n{answers}"

    def _lookup(self, rng: random.Random) -> str:
        """A list of keys with 5-digit codes, then every entry read back shuffled: each code read back is found
        only by matching its key in the list, the in-context lookup of needle retrieval (the read-back is 44% of the
        tokens of a lookup document with a 4k BPE)."""
        n = rng.randint(*LOOKUP_ENTRIES)
        keys: dict[str, None] = {}
        while len(keys) < n:
            keys[pseudo_word(rng, 2)] = None
        form = _choose(rng, LOOKUP_FORMS)
        entries = [form.format(key=key, code=rng.randint(10000, 99999)) for key in keys]
        read_back = rng.sample(entries, n)
        return "\n".join([_choose(rng, LOOKUP_TITLES).format(city=self._pick_kind["city"](rng).name), *entries,
                          _choose(rng, LOOKUP_CHECKS), *read_back])

    # ----------------------------------------------------------------------------------------------------------
    # Knowledge questions (MMLU format)

    def questions(self, n: int, seed: int = 0, top: int | None = None) -> list[dict]:
        """``n`` distinct multiple-choice questions on the world's facts, in MMLU's format.

        Each is ``{"question", "choices" (4 strings), "answer" (index 0-3), "subject" ("<kind>_<attribute>")}``. Facts
        are drawn uniformly without replacement from the entities of the ``top`` most mentioned ranks (all when
        ``None``); distractors come from the attribute's values in this world; answer positions are balanced (each
        index is correct ``n // 4`` or ``n // 4 + 1`` times). Deterministic in (world seed, ``seed``).
        """
        pool = self.entities if top is None else self.entities[:top]
        facts = [(e, a) for e in pool for a in e.facts]
        if not 0 <= n <= len(facts):
            raise ValueError(f"asked for {n} questions but the {len(pool)} entities hold {len(facts)} facts")
        rng = random.Random(_derive(self.cfg.seed, "questions", seed))
        positions = [i % 4 for i in range(n)]
        rng.shuffle(positions)
        out = []
        for (entity, attr), position in zip(rng.sample(facts, n), positions):
            correct = entity.facts[attr]
            distractors = []
            domain = self._domains[entity.kind, attr]
            while len(distractors) < 3:
                candidate = _choose(rng, domain)
                if candidate != correct and candidate not in distractors:
                    distractors.append(candidate)
            choices = distractors[:position] + [correct] + distractors[position:]
            out.append({"question": QUESTION_TEMPLATES[entity.kind, attr].format(s=entity.name),
                        "choices": choices, "answer": position, "subject": f"{entity.kind}_{attr}"})
        return out
