"""Windowed features of a whole corpus, computed in parallel and cached on disk."""
from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from realtime.audio import AudioError, load_audio
from realtime.features import DEFAULT, FeatureDefinition, FeatureExtractor

from .augment import Augmenter
from .librispeech import Utterance
from .windows import iter_windows

CACHE_FORMAT = 1  # bump when this module changes what it stores for the same inputs
_ARRAYS = ("stats", "mfcc", "y", "reader", "utt", "start")


@dataclass
class WindowSet:
    """Features of N windows. ``y``: 1 = female, 0 = male. ``meta``: provenance (feature hash, stat names...)."""

    stats: np.ndarray   # (N, n_stats) float32
    mfcc: np.ndarray    # (N, n_mfcc, n_frames) float32
    y: np.ndarray       # (N,) int8
    reader: np.ndarray  # (N,) str
    utt: np.ndarray     # (N,) str
    start: np.ndarray   # (N,) float32, seconds into the utterance
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.stats = np.asarray(self.stats, dtype=np.float32)
        self.mfcc = np.asarray(self.mfcc, dtype=np.float32)
        self.y = np.asarray(self.y, dtype=np.int8)
        self.reader = np.asarray(self.reader, dtype=str)
        self.utt = np.asarray(self.utt, dtype=str)
        self.start = np.asarray(self.start, dtype=np.float32)
        n = {name: getattr(self, name).shape[0] for name in _ARRAYS}
        if len(set(n.values())) != 1 or self.stats.ndim != 2 or self.mfcc.ndim != 3:
            raise ValueError(f"inconsistent WindowSet arrays: lengths {n}, stats {self.stats.shape}, "
                             f"mfcc {self.mfcc.shape}")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def n_stats(self) -> int:
        return int(self.stats.shape[1])

    @classmethod
    def empty(cls, n_stats: int, mfcc_shape: tuple[int, int] = (40, 87), meta: dict | None = None) -> "WindowSet":
        return cls(np.zeros((0, n_stats)), np.zeros((0, *mfcc_shape)), np.zeros(0), np.zeros(0, str),
                   np.zeros(0, str), np.zeros(0), dict(meta or {}))

    def subset(self, mask_or_idx) -> "WindowSet":
        """Rows picked by a boolean mask or integer indices (meta is shared)."""
        idx = np.asarray(mask_or_idx)
        return WindowSet(**{name: getattr(self, name)[idx] for name in _ARRAYS}, meta=dict(self.meta))

    @classmethod
    def concat(cls, sets: list["WindowSet"]) -> "WindowSet":
        """Stack sets row-wise; they must share the feature definition (meta of the first is kept)."""
        sets = list(sets)
        if not sets:
            raise ValueError("concat needs at least one WindowSet")
        hashes = {s.meta.get("feature_hash") for s in sets} - {None}
        if len(hashes) > 1:
            raise ValueError(f"cannot concat WindowSets with different feature definitions: {sorted(hashes)}")
        if len({(s.stats.shape[1], s.mfcc.shape[1:]) for s in sets}) > 1:
            raise ValueError("cannot concat WindowSets with different feature shapes")
        meta = dict(sets[0].meta)
        corpora = {}
        for s in sets:
            corpora.update(s.meta.get("reader_corpus") or {})
        if corpora:
            meta["reader_corpus"] = corpora
        return cls(**{name: np.concatenate([getattr(s, name) for s in sets]) for name in _ARRAYS}, meta=meta)

    @property
    def definition(self) -> FeatureDefinition:
        """The feature definition these windows were computed with (``meta['definition']``; DEFAULT if unrecorded)."""
        return FeatureDefinition.from_dict(self.meta["definition"]) if "definition" in self.meta else DEFAULT

    @property
    def corpus(self) -> np.ndarray:
        """(N,) str: the corpus of each window's reader ('' where unknown), from ``meta['reader_corpus']``."""
        table = self.meta.get("reader_corpus") or {}
        if not table:
            return np.full(len(self), "", dtype=object).astype(str)
        readers, inverse = np.unique(self.reader, return_inverse=True)
        return np.asarray([table.get(str(r), "") for r in readers], dtype=str)[inverse.reshape(-1)]

    def save(self, path: str | Path) -> Path:
        """Write an uncompressed .npz atomically (no pickles); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, **{name: getattr(self, name) for name in _ARRAYS},
                     meta=np.array(json.dumps(self.meta, default=str)))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "WindowSet":
        with np.load(Path(path), allow_pickle=False) as z:
            return cls(**{name: z[name] for name in _ARRAYS}, meta=json.loads(str(z["meta"])))


# --- corpus extraction -------------------------------------------------------------------------------

def cache_key(utterances: list[Utterance], *, definition: FeatureDefinition = DEFAULT, window_s: float = 2.0,
              hop_s: float = 0.5, augment: Augmenter | None = None, copies: int = 1, seed: int = 0) -> str:
    """Hash of everything that determines the output except the feature definition (which names the file)."""
    h = hashlib.sha256()
    h.update(json.dumps({"format": CACHE_FORMAT, "feature_hash": definition.hash, "window_s": window_s,
                         "hop_s": hop_s, "augment": augment.to_dict() if augment else None,
                         "copies": copies if augment else 1, "seed": seed}, sort_keys=True).encode())
    hash_utterances(h, utterances)
    return h.hexdigest()[:16]


def hash_utterances(h, utterances) -> None:
    """Feed ``h`` (a hashlib object) each utterance's file (path, size, mtime) and labels: a changed file or label
    changes the hash (the feature cache's key, and the voice embeddings' in offline.voice_probe)."""
    for u in utterances:
        st = os.stat(u.path)
        h.update(f"\n{Path(u.path).resolve()}|{st.st_size}|{st.st_mtime_ns}|{u.reader}|{u.gender}|{u.utt_id}"
                 .encode())


def cache_file(utterances: list[Utterance], *, definition: FeatureDefinition = DEFAULT,
               cache_dir: str | Path = Path(".cache/features"), **key_args) -> Path:
    """Where ``extract_corpus`` keeps (or finds) the features for these arguments."""
    key = cache_key(utterances, definition=definition, **key_args)
    return Path(cache_dir) / f"windows-{definition.hash}-{key}.npz"


_WORKER: dict = {}


def _die_with_parent(parent: int) -> None:
    """In a worker process: end it (SIGTERM) when the process that started it ends, however that ends. Without
    this, ``kill PID`` of a running ``offline train`` (SIGTERM ends Python at once, without closing its pool)
    leaves its workers asleep forever. Linux only (``prctl(PR_SET_PDEATHSIG)``); elsewhere a no-op."""
    import ctypes
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it ended before the signal was armed
        os._exit(1)


def _init_worker(definition: FeatureDefinition, window_s: float, hop_s: float, augment: Augmenter | None,
                 copies: int, seed: int, parent: int | None = None) -> None:
    if parent is not None:
        _die_with_parent(parent)
    _WORKER.update(extractor=FeatureExtractor(definition), window_s=window_s, hop_s=hop_s, augment=augment,
                   copies=copies, seed=seed)


def _extract_one(index: int, path: str, key: str):
    """(index, stats, mfcc, starts) for one utterance, or (index, error message)."""
    w = _WORKER
    fe: FeatureExtractor = w["extractor"]
    d = fe.definition
    try:
        audio = load_audio(path)
        versions = [audio] if w["augment"] is None else [
            w["augment"](audio, w["augment"].rng_for(key, c, w["seed"]), sr=d.sr) for c in range(w["copies"])]
        stats, mfcc, starts = [], [], []
        for x in versions:
            for start, window in iter_windows(x, w["window_s"], w["hop_s"], d.sr, min_samples=d.min_samples):
                s, m = fe.extract(window)
                stats.append(s)
                mfcc.append(m)
                starts.append(start)
    except AudioError as exc:
        return index, str(exc)
    if not stats:
        return index, f"{path}: no windows"
    return index, np.stack(stats), np.stack(mfcc), np.asarray(starts, dtype=np.float32)


def extract_corpus(utterances: list[Utterance], *, definition: FeatureDefinition = DEFAULT, window_s: float = 2.0,
                   hop_s: float = 0.5, augment: Augmenter | None = None, copies: int = 1, seed: int = 0,
                   cache_dir: str | Path | None = Path(".cache/features"), jobs: int = 2, progress: bool = True,
                   strict: bool = False) -> WindowSet:
    """Window every utterance and compute ``FeatureExtractor.extract`` on each window -> WindowSet.

    Audio is decoded one utterance at a time in ``jobs`` worker processes (``jobs=1``: in this process).
    With ``augment``, each window appears ``copies`` times, each from a differently augmented copy of its
    utterance (deterministic per utterance given ``seed``); the clean windows are not included.
    Results are cached in ``cache_dir`` (None: no cache) under a name holding the feature-definition hash
    and a hash of the inputs, so a changed definition, file, label or parameter recomputes.
    Unusable utterances (corrupt, shorter than the minimum) are skipped with a warning, or raise if ``strict``.
    ``meta['cache_path']`` and ``meta['cache_hit']`` say where the features live and whether they were reused.
    """
    utterances = list(utterances)
    if int(round(window_s * definition.sr)) != definition.window_samples:
        raise ValueError(f"window_s={window_s} does not match the feature definition's "
                         f"{definition.window_seconds} s window")
    if hop_s <= 0:
        raise ValueError(f"hop_s must be positive, got {hop_s}")
    if copies < 1:
        raise ValueError(f"copies must be at least 1, got {copies}")
    key_args = dict(window_s=window_s, hop_s=hop_s, augment=augment, copies=copies, seed=seed)
    path = cache_file(utterances, definition=definition, cache_dir=cache_dir, **key_args) if cache_dir else None
    corpora = {u.reader: u.corpus for u in utterances if getattr(u, "corpus", "")}
    if path is not None and path.is_file():
        ws = WindowSet.load(path)
        _report_skipped(ws.meta.get("skipped", []), strict)
        ws.meta.update(cache_path=str(path), cache_hit=True)
        if corpora:
            ws.meta["reader_corpus"] = corpora
        return ws

    from tqdm import tqdm

    t0 = time.perf_counter()
    results: list = [None] * len(utterances)
    init_args = (definition, window_s, hop_s, augment, copies, seed)
    tasks = [(i, str(u.path), u.utt_id) for i, u in enumerate(utterances)]
    bar = tqdm(total=len(tasks), unit="utt", desc="features", disable=not progress, dynamic_ncols=True)
    try:
        if jobs <= 1 or len(tasks) <= 1:
            _init_worker(*init_args)
            for task in tasks:
                r = _extract_one(*task)
                results[r[0]] = r
                bar.update()
        else:
            import multiprocessing as mp

            with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"),
                                     initializer=_init_worker, initargs=(*init_args, os.getpid())) as pool:
                for fut in as_completed([pool.submit(_extract_one, *t) for t in tasks]):
                    r = fut.result()
                    results[r[0]] = r
                    bar.update()
    finally:
        bar.close()

    skipped = [r[1] for r in results if len(r) == 2]
    _report_skipped(skipped, strict)
    ok = [(utterances[r[0]], r) for r in results if len(r) == 4]
    extractor = FeatureExtractor(definition)
    meta = {"feature_hash": definition.hash, "definition": definition.to_dict(), "stat_names": extractor.stat_names,
            **key_args, "augment": augment.to_dict() if augment else None, "copies": copies if augment else 1,
            "n_utterances": len(ok), "skipped": skipped, "seconds": round(time.perf_counter() - t0, 3)}
    if not ok:
        ws = WindowSet.empty(extractor.n_stats, (definition.n_mfcc, definition.n_frames), meta)
    else:
        counts = [len(r[3]) for _, r in ok]
        ws = WindowSet(
            stats=np.concatenate([r[1] for _, r in ok]), mfcc=np.concatenate([r[2] for _, r in ok]),
            y=np.repeat([u.label for u, _ in ok], counts), reader=np.repeat([u.reader for u, _ in ok], counts),
            utt=np.repeat([u.utt_id for u, _ in ok], counts), start=np.concatenate([r[3] for _, r in ok]),
            meta=meta)
    if corpora:
        ws.meta["reader_corpus"] = corpora
    if path is not None:
        ws.save(path)
    ws.meta.update(cache_path=str(path) if path else None, cache_hit=False)
    return ws


def _report_skipped(skipped: list[str], strict: bool) -> None:
    if not skipped:
        return
    if strict:
        raise AudioError(f"{len(skipped)} utterance(s) unusable:\n  " + "\n  ".join(skipped[:20]))
    more = f"\n  ... and {len(skipped) - 20} more" if len(skipped) > 20 else ""
    warnings.warn(f"skipped {len(skipped)} unusable utterance(s):\n  " + "\n  ".join(skipped[:20]) + more,
                  stacklevel=3)
