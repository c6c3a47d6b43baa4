"""CIDEr-D as an SCST reward: coco-caption's formula, with document frequencies computed once from the
training references, so that any batch of captions can be scored against any images.

``CiderD(refs).score(names, captions)`` equals pycocoevalcap's ``Cider().compute_score`` per image when both see
the same corpus (tests/test_scst.py checks it). The document frequencies are counted once at start and each
image's reference tf-idf vectors built the first time it is scored against, so a batch costs only its
candidates' vectors and the dot products (and consensus reranking, which reads a few neighbours' references
per image, never builds the others').
"""

import math
from collections import Counter, defaultdict

import numpy as np

N = 4  # n-grams up to 4
SIGMA = 6.0  # the Gaussian length penalty's width (CIDEr-D)


def ngrams(words: list[str]) -> Counter:
    return Counter(tuple(words[i : i + k]) for k in range(1, N + 1) for i in range(len(words) - k + 1))


def ngram_set(captions: list[list[str]]) -> set[tuple]:
    """The distinct n-grams (n = 1..4) of an image's captions: what its document frequency counts."""
    return {tuple(w[i : i + k]) for w in captions for k in range(1, N + 1) for i in range(len(w) - k + 1)}


class CiderD:
    def __init__(self, references: dict[str, list[list[str]]]):
        """``references``: image name -> its tokenised reference captions (the whole training split)."""
        self.df: defaultdict = defaultdict(float)
        for refs in references.values():
            for gram in ngram_set(refs):
                self.df[gram] += 1
        self.log_images = math.log(float(len(references)))
        self.refs = ReferenceVectors(self, references)  # name -> its references' vectors, built when first read

    def _vector(self, counts: Counter) -> tuple[list[dict], list[float], int]:
        """tf-idf per n-gram order, the norms, and coco-caption's "length" (which counts bigrams)."""
        vec: list[dict] = [{} for _ in range(N)]
        norm = [0.0] * N
        length = 0
        for gram, tf in counts.items():
            n = len(gram) - 1
            weight = float(tf) * (self.log_images - math.log(max(1.0, self.df.get(gram, 0.0))))
            vec[n][gram] = weight
            norm[n] += weight * weight
            if n == 1:
                length += tf
        return vec, [math.sqrt(x) for x in norm], length

    def vector(self, words: list[str]) -> tuple[list[dict], list[float], int]:
        """A caption as a reference vector: what :meth:`score_against` takes in its ``refs`` list."""
        return self._vector(ngrams(words))

    def score_one(self, name: str, words: list[str]) -> float:
        return self.score_against(words, self.refs[name])

    def score_against(self, words: list[str], refs: list) -> float:
        """CIDEr-D of a caption against any list of reference vectors (entries of ``self.refs``' lists)."""
        return float(self.scores_against([words], refs)[0])

    def scores_against(self, captions: list[list[str]], refs: list) -> np.ndarray:
        """CIDEr-D of each of several captions against the same reference vectors (consensus reranking's beams
        against their image's neighbours' captions): the references indexed once by n-gram, so each caption
        costs its own n-grams' lookups instead of one per reference."""
        by_gram: list[dict] = [defaultdict(list) for _ in range(N)]  # order -> n-gram -> [(reference, weight)]
        for j, (ref_vec, _, _) in enumerate(refs):
            for n in range(N):
                for gram, weight in ref_vec[n].items():
                    by_gram[n][gram].append((j, weight))
        ref_norms = np.array([ref_norm for _, ref_norm, _ in refs]).reshape(len(refs), N)  # [R, N]
        ref_lengths = np.array([ref_length for _, _, ref_length in refs], dtype=np.float64)  # [R]
        out = np.zeros(len(captions))
        for i, words in enumerate(captions):
            vec, norm, length = self._vector(ngrams(words))
            penalty = np.exp(-((length - ref_lengths) ** 2) / (2 * SIGMA**2))  # [R]
            total = np.zeros(N)
            for n in range(N):
                val = np.zeros(len(refs))  # [R]
                for gram, w in vec[n].items():
                    for j, ref_w in by_gram[n].get(gram, ()):
                        val[j] += min(w, ref_w) * ref_w
                if norm[n] != 0:
                    both = ref_norms[:, n] != 0
                    val[both] /= norm[n] * ref_norms[both, n]
                total[n] = float((val * penalty).sum())
            out[i] = total.mean() / len(refs) * 10.0
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
