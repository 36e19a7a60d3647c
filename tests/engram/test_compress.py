from engram.compress import Compression, normalize


def test_normalize_follows_the_demo_pipeline():
    assert normalize("Apple") == "apple"
    assert normalize(" apple") == "apple"
    assert normalize("Café") == "cafe"
    assert normalize("ﬁ") == "fi"  # NFKC ligature
    assert normalize("\n\n") == " "  # a pure-whitespace token survives as one space
    assert normalize("\t") == " "
    assert normalize("a  b") == "a b"


def test_from_vocabulary_is_surjective_and_first_seen():
    decoded = ["<pad>", "Apple", " apple", "APPLE", "pear", " ", "\n", "\ufffd", "\ufffd"]
    raw = [None, None, None, None, None, None, None, "<0xE2>", "<0x82>"]
    comp = Compression.from_vocabulary(decoded, raw)
    assert comp.lookup == (0, 1, 1, 1, 2, 3, 3, 4, 5)
    assert comp.size == 6 and comp.vocab_size == 9
    assert set(comp.lookup) == set(range(comp.size))
    assert 0 < comp.ratio < 1
    assert Compression.identity(5).lookup == (0, 1, 2, 3, 4)
    assert comp.fingerprint() != Compression.identity(9).fingerprint()
