"""Reader-grouped, gender-stratified folds on the real corpus."""
from __future__ import annotations


import pytest

from offline.librispeech import load_librispeech
from offline.splits import holdout_readers, reader_folds, reader_genders
from .data import LIBRISPEECH

DATA = LIBRISPEECH  # $VOICEGENDER_DATA/LibriSpeech, else ../shared/data/LibriSpeech


@pytest.fixture(scope="module")
def genders() -> dict[str, str]:
    return reader_genders(load_librispeech(DATA))


@pytest.fixture(scope="module")
def utterances():
    return load_librispeech(DATA)


def test_folds_disjoint_covering_balanced(utterances, genders):
    folds = reader_folds(utterances, k=5, seed=0)
    assert len(folds) == 5
    everyone = set(genders)
    tests = [f.test for f in folds]
    assert set().union(*tests) == everyone
    assert sum(len(t) for t in tests) == len(everyone)  # pairwise disjoint
    for train, test in folds:
        assert not train & test and train | test == everyone
        n_f = sum(genders[r] == "F" for r in test)
        n_m = sum(genders[r] == "M" for r in test)
        assert abs(n_f - n_m) <= 1
    sizes = [len(t) for t in tests]
    assert max(sizes) - min(sizes) <= 1


def test_folds_reproducible_by_seed(utterances, genders):
    assert reader_folds(utterances, k=5, seed=7) == reader_folds(utterances, k=5, seed=7)
    assert reader_folds(genders, k=5, seed=7) == reader_folds(utterances, k=5, seed=7)
    assert reader_folds(utterances, k=5, seed=7) != reader_folds(utterances, k=5, seed=8)


def test_folds_group_utterances_by_reader():
    utts = [("a", "F"), ("a", "F"), ("b", "F"), ("c", "M"), ("d", "M"), ("d", "M")]
    folds = reader_folds(utts, k=2, seed=0)
    assert sorted(len(f.test) for f in folds) == [2, 2]
    assert all(sum(r in {"a", "b"} for r in f.test) == 1 for f in folds)


def test_fold_errors():
    with pytest.raises(ValueError, match="both"):
        reader_genders([("a", "F"), ("a", "M")])
    with pytest.raises(ValueError, match="at least k"):
        reader_folds({"a": "F", "b": "M", "c": "M"}, k=2)
    with pytest.raises(ValueError, match="at least 2"):
        reader_folds({"a": "F", "b": "M"}, k=1)


def test_holdout_readers(genders):
    kept, held = holdout_readers(genders, 0.2, seed=1)
    assert not kept & held and kept | held == set(genders)
    assert sum(genders[r] == "F" for r in held) == 25
    assert sum(genders[r] == "M" for r in held) == 25
    assert holdout_readers(genders, 0.2, seed=1) == (kept, held)
    assert holdout_readers(genders, 0.2, seed=2) != (kept, held)
    tiny = {"a": "F", "b": "F", "c": "M", "d": "M"}
    kept, held = holdout_readers(tiny, 0.01, seed=0)
    assert len(held) == 2 and {tiny[r] for r in held} == {"F", "M"}
    with pytest.raises(ValueError):
        holdout_readers(genders, 1.0, seed=0)


def test_folds_and_holdout_are_stratified_by_corpus_too():
    from offline.librispeech import load_corpora

    utts = load_corpora([DATA, DATA.parent / "speechocean762" / "manifest.csv"])
    corpus = {u.reader: u.corpus for u in utts}
    gender = reader_genders(utts)
    for _, test in reader_folds(utts, k=5, seed=0):
        for c in ("LibriSpeech", "speechocean762"):
            for g in "FM":
                n = sum(corpus[r] == c and gender[r] == g for r in test)
                total = sum(corpus[r] == c and gender[r] == g for r in gender)
                assert abs(n - total / 5) <= 1, (c, g, n, total)
    kept, held = holdout_readers(gender, 0.2, seed=0, strata=corpus)
    for c in ("LibriSpeech", "speechocean762"):
        share = sum(corpus[r] == c for r in held) / sum(corpus[r] == c for r in gender)
        assert 0.15 < share < 0.25, (c, share)
    # one corpus: the folds are what they were before corpora existed
    ls = [u for u in utts if u.corpus == "LibriSpeech"]
    assert reader_folds(ls, k=5, seed=0) == reader_folds(reader_genders(ls), k=5, seed=0)
