"""CIDEr-D as an SCST reward: coco-caption's formula, with document frequencies computed once from the
training references, so that any batch of captions can be scored against any images.

``CiderD(refs).score(names, captions)`` equals pycocoevalcap's ``Cider().compute_score`` per image when both see
the same corpus (tests/test_scst.py checks it). The references' tf-idf vectors are built once at start, so a
batch costs only its candidates' vectors and the dot products.
"""

import math
from collections import Counter, defaultdict

import numpy as np

N = 4  # n-grams up to 4
SIGMA = 6.0  # the Gaussian length penalty's width (CIDEr-D)


def ngrams(words: list[str]) -> Counter:
    return Counter(tuple(words[i : i + k]) for k in range(1, N + 1) for i in range(len(words) - k + 1))


class CiderD:
    def __init__(self, references: dict[str, list[list[str]]]):
        """``references``: image name -> its tokenised reference captions (the whole training split)."""
        counts = {name: [ngrams(r) for r in refs] for name, refs in references.items()}
        self.df: defaultdict = defaultdict(float)
        for refs in counts.values():
            for gram in {g for r in refs for g in r}:
                self.df[gram] += 1
        self.log_images = math.log(float(len(counts)))
        self.refs = {name: [self._vector(c) for c in refs] for name, refs in counts.items()}

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
        vec, norm, length = self._vector(ngrams(words))
        total = np.zeros(N)
        for ref_vec, ref_norm, ref_length in refs:
            penalty = math.exp(-((length - ref_length) ** 2) / (2 * SIGMA**2))
            for n in range(N):
                val = sum(min(w, ref_vec[n].get(g, 0.0)) * ref_vec[n].get(g, 0.0) for g, w in vec[n].items())
                if norm[n] != 0 and ref_norm[n] != 0:
                    val /= norm[n] * ref_norm[n]
                total[n] += val * penalty
        return float(total.mean() / len(refs) * 10.0)

    def score(self, names: list[str], captions: list[list[str]]) -> np.ndarray:
        """CIDEr-D of each caption against the references of the image named beside it."""
        return np.array([self.score_one(n, c) for n, c in zip(names, captions, strict=True)])
