"""Sentence BLEU-4 as an SCST reward: coco-caption's per-image BLEU (the second value of pycocoevalcap's
``Bleu(4).compute_score``), with each training image's clipped n-gram counts built once at start.

``BleuReward(refs).score(names, captions)`` equals pycocoevalcap's per-image BLEU-4 (closest reference length,
its tiny/small constants) for the same references (tests/test_scst.py checks it). ``MixedReward`` adds it to
CIDEr-D with a weight: the reward ``train.scst_bleu_weight`` trains with.
"""

import math
from collections import Counter

import numpy as np

from captioner.metrics.cider_reward import N, ngrams

SMALL, TINY = 1e-9, 1e-15  # coco-caption's constants: an order with no match scores ~0, never a division by 0


class BleuReward:
    def __init__(self, references: dict[str, list[list[str]]]):
        """``references``: image name -> its tokenised reference captions (the whole training split)."""
        self.refs = {}
        for name, refs in references.items():
            clip: Counter = Counter()
            for r in refs:
                for gram, c in ngrams(r).items():
                    clip[gram] = max(clip[gram], c)
            self.refs[name] = (clip, [len(r) for r in refs])

    def score_one(self, name: str, words: list[str]) -> float:
        clip, lengths = self.refs[name]
        correct = [0] * N
        for gram, c in ngrams(words).items():
            correct[len(gram) - 1] += min(c, clip.get(gram, 0))
        n = len(words)
        bleu = 1.0
        for k in range(N):
            bleu *= (correct[k] + TINY) / (max(0, n - k) + SMALL)
        bleu **= 1.0 / N
        ref_len = min((abs(r - n), r) for r in lengths)[1]  # coco-caption's "closest" reference length
        ratio = (n + TINY) / (ref_len + SMALL)
        return bleu * math.exp(1 - 1 / ratio) if ratio < 1 else bleu

    def score(self, names: list[str], captions: list[list[str]]) -> np.ndarray:
        """BLEU-4 of each caption against the references of the image named beside it."""
        return np.array([self.score_one(n, c) for n, c in zip(names, captions, strict=True)])


class MixedReward:
    """CIDEr-D + ``weight`` x sentence BLEU-4, both against the image's training references."""

    def __init__(self, cider, bleu: BleuReward, weight: float):
        self.cider, self.bleu, self.weight = cider, bleu, weight

    def score(self, names: list[str], captions: list[list[str]]) -> np.ndarray:
        return self.cider.score(names, captions) + self.weight * self.bleu.score(names, captions)
