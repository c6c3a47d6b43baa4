"""CIDEr-D as an SCST reward: coco-caption's formula, with document frequencies computed once from the
training references, so that any batch of captions can be scored against any images.

``CiderD(refs).score(names, captions)`` equals pycocoevalcap's ``Cider().compute_score`` per image when both see
the same corpus (tests/test_scst.py checks it). The document frequencies are counted once at start and each
image's reference tf-idf vectors built the first time it is scored against, so a batch costs only its
candidates' vectors and the dot products (and consensus reranking, which reads a few neighbours' references
per image, never builds the others').
"""

import math
from collections import Counter
from itertools import chain
from typing import NamedTuple

import numpy as np

N = 4  # n-grams up to 4
SIGMA = 6.0  # the Gaussian length penalty's width (CIDEr-D)


def ngrams(words: list[str]) -> Counter:
    return Counter(tuple(words[i : i + k]) for k in range(1, N + 1) for i in range(len(words) - k + 1))


def ngram_set(captions: list[list[str]]) -> set[tuple]:
    """The distinct n-grams (n = 1..4) of an image's captions: what its document frequency counts."""
    return {tuple(w[i : i + k]) for w in captions for k in range(1, N + 1) for i in range(len(w) - k + 1)}


class Vector(NamedTuple):
    """A caption's tf-idf vector: its n-grams (as numbers, :attr:`CiderD.gram_ids`), their weights and orders
    (n - 1), the norm of each order's part, and coco-caption's length (the caption's bigram count)."""

    grams: np.ndarray  # [G] int64
    weights: np.ndarray  # [G] float64
    orders: np.ndarray  # [G] int64, 0..N-1
    norm: np.ndarray  # [N]
    length: int


class CiderD:
    def __init__(self, references: dict[str, list[list[str]]]):
        """``references``: image name -> its tokenised reference captions (the whole training split)."""
        # document frequency: in how many images' references each n-gram occurs (counted in C by Counter)
        self.df = Counter(chain.from_iterable(ngram_set(refs) for refs in references.values()))
        self.log_images = math.log(float(len(references)))
        self.gram_ids: dict[tuple, int] = {}  # n-gram -> a number, given when a vector first holds it
        self.refs = ReferenceVectors(self, references)  # name -> its references' vectors, built when first read

    def _vector(self, counts: Counter) -> Vector:
        """tf-idf per n-gram order, the norms, and coco-caption's "length" (which counts bigrams)."""
        grams, weights, orders = [], [], []
        norm = [0.0] * N
        length = 0
        for gram, tf in counts.items():
            n = len(gram) - 1
            weight = float(tf) * (self.log_images - math.log(max(1.0, self.df.get(gram, 0.0))))
            grams.append(self.gram_ids.setdefault(gram, len(self.gram_ids)))
            weights.append(weight)
            orders.append(n)
            norm[n] += weight * weight
            if n == 1:
                length += tf
        return Vector(np.array(grams, dtype=np.int64), np.array(weights), np.array(orders, dtype=np.int64),
                      np.sqrt(norm), length)

    def vector(self, words: list[str]) -> Vector:
        """A caption as a reference vector: what :meth:`score_against` takes in its ``refs`` list."""
        return self._vector(ngrams(words))

    def score_one(self, name: str, words: list[str]) -> float:
        return self.score_against(words, self.refs[name])

    def score_against(self, words: list[str], refs: list[Vector]) -> float:
        """CIDEr-D of a caption against any list of reference vectors (entries of ``self.refs``' lists)."""
        return float(self.scores_against([words], refs)[0])

    def scores_against(self, captions: list[list[str]], refs: list[Vector]) -> np.ndarray:
        """CIDEr-D of each of several captions against the same reference vectors (consensus reranking's beams
        against their image's neighbours' captions). All references' n-grams are laid end to end once; each
        caption then finds its own n-grams among them in one sorted search, and coco-caption's clipped
        products min(w, w_ref) w_ref are summed per reference and n-gram order in one pass."""
        ref_grams = np.concatenate([r.grams for r in refs])  # [E] every reference's n-grams, end to end
        ref_weights = np.concatenate([r.weights for r in refs])  # [E]
        slots = np.repeat(np.arange(len(refs)) * N, [len(r.grams) for r in refs]) + np.concatenate(
            [r.orders for r in refs])  # [E] reference j, order n -> j * N + n
        ref_norms = np.stack([r.norm for r in refs])  # [R, N]
        ref_lengths = np.array([r.length for r in refs], dtype=np.float64)  # [R]
        out = np.zeros(len(captions))
        for i, words in enumerate(captions):
            cand = self._vector(ngrams(words))
            if not len(cand.grams):
                continue  # an empty caption: CIDEr-D 0
            order = np.argsort(cand.grams)
            grams, weights = cand.grams[order], cand.weights[order]  # [G] sorted by n-gram id
            at = np.searchsorted(grams, ref_grams).clip(max=len(grams) - 1)  # [E] where each would be
            clipped = np.where(grams[at] == ref_grams, np.minimum(weights[at], ref_weights), 0.0)  # [E]
            val = np.bincount(slots, clipped * ref_weights, minlength=len(refs) * N).reshape(len(refs), N)
            denominator = cand.norm * ref_norms  # [R, N]; zero where either has no n-gram of that order
            val = np.divide(val, denominator, out=np.zeros_like(val), where=denominator != 0)
            penalty = np.exp(-((cand.length - ref_lengths) ** 2) / (2 * SIGMA**2))  # [R]
            out[i] = (val * penalty[:, None]).sum(0).mean() / len(refs) * 10.0
        return out

    def score(self, names: list[str], captions: list[list[str]]) -> np.ndarray:
        """CIDEr-D of each caption against the references of the image named beside it."""
        return np.array([self.score_one(n, c) for n, c in zip(names, captions, strict=True)])


class ReferenceVectors(dict):
    """``CiderD.refs``: image name -> its references' tf-idf vectors (:meth:`CiderD.vector`), each image's built
    the first time it is read."""

    def __init__(self, cider: CiderD, references: dict[str, list[list[str]]]):
        super().__init__()
        self.cider, self.references = cider, references

    def __missing__(self, name: str) -> list:
        vectors = [self.cider.vector(r) for r in self.references[name]]  # (KeyError: an unknown image)
        self[name] = vectors
        return vectors
