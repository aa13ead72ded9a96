"""Speakers whose gender label the evidence contradicts: kept out of training, never out of evaluation.

How they were found (2026-12-02, the 379 adult voices of ``../shared``):

1. Speaker-disjoint 5-fold CV on both corpora with two unrelated models: XGBoost on this project's stats
   vector, and a logistic probe on the embedding of a speaker encoder pretrained on thousands of other voices
   (Resemblyzer's GE2E LSTM, run offline once; it is not a dependency). Each speaker's out-of-fold logits
   were averaged (positive = female).
2. A speaker is listed when **both** models put it on the other side, and its median F0 lies in the other
   sex's range on this corpus (speechocean762 speakers' median F0: women 187-262 Hz, men 107-203 Hz, 5th to
   95th percentile).

Seven speechocean762 speakers qualify; the two LibriSpeech readers that both models also miss (118: male,
199 Hz; 322: female, 146 Hz) sit inside the overlap and stay. Whether the seven are mislabelled or
exceptional voices cannot be told without listening; either way they teach the models that a 240 Hz voice
with the formants that go with it is male. Training with ``TrainConfig.label_audit`` (``--set
label_audit=true``) leaves them out, and
every evaluation still scores them with the label the corpus gives (so the figures in the model card count
them as errors when the models disagree with the label).
"""
from __future__ import annotations

__all__ = ["LABEL_SUSPECTS", "suspect_readers"]

# reader -> (label in the corpus, median F0 Hz, out-of-fold mean logit: GE2E probe, XGBoost on stats, age)
LABEL_SUSPECTS: dict[str, tuple[str, int, float, float, int]] = {
    "so762-0765": ("M", 185, 1.18, 2.17, 20),
    "so762-2355": ("M", 218, 1.33, 2.96, 20),
    "so762-2380": ("F", 121, -3.23, -6.47, 21),
    "so762-2430": ("F", 116, -2.41, -0.66, 22),
    "so762-2451": ("F", 111, -2.53, -2.93, 23),
    "so762-2917": ("M", 238, 1.45, 2.21, 19),
    "so762-3023": ("M", 242, 3.02, 4.36, 19),
}


def suspect_readers() -> tuple[str, ...]:
    """The reader ids of ``LABEL_SUSPECTS``, sorted (what ``TrainConfig.label_audit`` leaves out)."""
    return tuple(sorted(LABEL_SUSPECTS))
