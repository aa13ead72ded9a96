"""Reader-grouped, gender-stratified splits: no reader is ever on both sides of a split."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NamedTuple

import numpy as np


class Fold(NamedTuple):
    """Reader IDs on each side of one fold; unpacks as ``train, test``."""

    train: set[str]
    test: set[str]


def per_speaker_weights(reader) -> np.ndarray:
    """(N,) float64 ``1 / (rows of that speaker)`` for each row's speaker id: every speaker weighs the same in
    total, whatever number of windows or files a corpus kept of them."""
    _, inv, counts = np.unique(np.asarray(reader).astype(str), return_inverse=True, return_counts=True)
    return 1.0 / counts[inv.reshape(-1)]


def reader_genders(items: Iterable | Mapping[str, str]) -> dict[str, str]:
    """{reader: 'F'|'M'} from utterances (anything with .reader and .gender), (reader, gender) pairs or a mapping.

    A reader labelled with both genders is an error.
    """
    pairs = items.items() if isinstance(items, Mapping) else (
        (it.reader, it.gender) if hasattr(it, "reader") else tuple(it) for it in items)
    genders: dict[str, str] = {}
    for reader, gender in pairs:
        reader = str(reader)
        if genders.setdefault(reader, gender) != gender:
            raise ValueError(f"reader {reader} is labelled both {genders[reader]} and {gender}")
    return genders


def reader_corpora(items) -> dict[str, str] | None:
    """{reader: corpus} from utterances that carry a ``corpus``; None for mappings and pairs."""
    if isinstance(items, Mapping):
        return None
    items = list(items)
    if not items or not hasattr(items[0], "corpus"):
        return None
    return {str(u.reader): str(u.corpus) for u in items}


def _shuffled_by_gender(genders: Mapping[str, str], rng: np.random.Generator,
                        strata: Mapping[str, str] | None = None) -> list[list[str]]:
    """Readers of each (stratum, gender) group (sorted by stratum, then F before M), sorted then shuffled by
    ``rng``. Without ``strata`` (or with one stratum) the groups are the genders."""
    groups = []
    key = lambda r: ((strata or {}).get(r, ""), genders[r])  # noqa: E731
    for k in sorted({key(r) for r in genders}):
        readers = sorted(r for r in genders if key(r) == k)
        groups.append([readers[i] for i in rng.permutation(len(readers))])
    return groups


def reader_folds(utterances: Iterable | Mapping[str, str], k: int = 5, seed: int = 0) -> list[Fold]:
    """k folds of readers, stratified by gender (and by corpus when the utterances carry one) and
    reproducible by ``seed``.

    Test sets are disjoint and together cover every reader; within each gender (of each corpus) the per-fold
    counts differ by at most one, and fold sizes differ by at most one overall.
    """
    utterances = utterances if isinstance(utterances, Mapping) else list(utterances)
    strata = reader_corpora(utterances)
    genders = reader_genders(utterances)
    if k < 2:
        raise ValueError(f"k must be at least 2, got {k}")
    counts = {g: sum(1 for v in genders.values() if v == g) for g in sorted(set(genders.values()))}
    if not counts or min(counts.values()) < k:
        raise ValueError(f"each gender needs at least k={k} readers for {k} folds, got {counts}")
    rng = np.random.default_rng(seed)
    tests: list[set[str]] = [set() for _ in range(k)]
    offset = 0  # continue dealing where the previous gender stopped, so fold sizes stay level
    for readers in _shuffled_by_gender(genders, rng, strata):
        for i, reader in enumerate(readers):
            tests[(offset + i) % k].add(reader)
        offset = (offset + len(readers)) % k
    everyone = set(genders)
    return [Fold(everyone - t, t) for t in tests]


def holdout_readers(readers_with_gender: Iterable | Mapping[str, str], fraction: float, seed: int = 0, *,
                    strata: Mapping[str, str] | None = None) -> tuple[set[str], set[str]]:
    """Split readers into ``(kept, held_out)`` with about ``fraction`` of each gender (of each stratum, e.g.
    corpus, when ``strata`` maps readers to one) held out.

    At least one reader of each group is held out and at least one kept. Reproducible by ``seed``.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    genders = reader_genders(readers_with_gender)
    rng = np.random.default_rng(seed)
    held: set[str] = set()
    for readers in _shuffled_by_gender(genders, rng, strata):
        if len(readers) < 2:
            raise ValueError(f"need at least 2 readers of each gender to hold some out, got {readers}")
        n = min(max(1, round(fraction * len(readers))), len(readers) - 1)
        held.update(readers[:n])
    return set(genders) - held, held
