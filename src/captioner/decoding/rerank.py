"""Consensus reranking of the beam: choose among the K final beams the caption that agrees best with what
people wrote about the most similar training images.

Devlin et al. 2015 ("Language Models for Image Captioning: The Quirks and What Works") and Mao et al. 2015
(m-RNN) rerank a model's candidates by their similarity to the captions of the image's nearest training
neighbours. Here each of the K beams scores

    score / length ** length_penalty  +  weight x CIDEr-D(beam, captions of the k nearest training images)

(the first term is what plain beam search picks by; CIDEr-D with the training split's document frequencies),
and the beam with the highest sum is the caption. With ``mbr_weight`` > 0 each beam also scores

    mbr_weight x sum over the image's other beams j of  p_j x CIDEr-D(beam, beam j)

a minimum-Bayes-risk term (Kumar & Byrne 2004): p_j is beam j's share of the beams' probability (a softmax of
their length-normalised scores), so the caption that agrees best with what the model itself finds likely wins
(on Flickr8k it lowered every metric: docs/results.md). Neighbours: cosine similarity of the encoder's global
feature (an ensemble across encoders: of its first file's encoder; on Flickr8k, neighbours by the fine-tuned
Lite2 alone chose better captions than by Lite2 and Lite0 together). Only training captions are read; the image
being captioned needs no references.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from captioner.decoding.beam import Hypothesis
from captioner.metrics.cider_reward import CiderD


class ConsensusReranker:
    def __init__(self, index: Tensor, captions: list[list[list[str]]], k: int = 30, weight: float = 0.3,
                 key: str = "global", mbr_weight: float = 0.0):
        """``index``: [N, D] the training images' global features (``key`` of the features the model decodes
        from: "global", or "0.global" for an ensemble across encoders); ``captions``: each image's tokenised
        captions, in the same order."""
        self.index = F.normalize(index.float(), dim=1).cpu()  # [N, D] unit vectors
        self.captions = captions
        self.cider = CiderD({str(i): caps for i, caps in enumerate(captions)})
        self.k, self.weight, self.key, self.mbr_weight = k, weight, key, mbr_weight

    def choose(self, feats: dict[str, Tensor], nbest: list[list[Hypothesis]], words: list[list[list[str]]],
               length_penalty: float, exclude: list[list[int]] | None = None) -> list[Hypothesis]:
        """The chosen beam of each image; ``words``: the beams' captions as words, as ``nbest``; ``exclude``:
        per image, index rows never taken as its neighbours (:meth:`neighbours`)."""
        chosen = []
        for beams, beam_words, near in zip(nbest, words, self.neighbours(feats, exclude), strict=True):
            refs = [v for j in near for v in self.cider.refs[str(j)]]
            scores = torch.tensor([h.score / max(1, len(h.tokens) + h.finished) ** length_penalty for h in beams],
                                  dtype=torch.float64)  # [K]
            totals = scores + self.weight * torch.from_numpy(self.cider.scores_against(beam_words, refs))  # [K]
            if self.mbr_weight > 0 and len(beams) > 1:
                totals += self.mbr_weight * self._expected_agreement(beam_words, scores.softmax(0))
            chosen.append(beams[int(totals.argmax())])
        return chosen

    def neighbours(self, feats: dict[str, Tensor], exclude: list[list[int]] | None = None) -> list[list[int]]:
        """For each image of the batch, the rows of its ``k`` most similar training images, most similar first.
        ``exclude``: per image, rows it may not take (e.g. its own, when a training image is captioned: its own
        captions would be read as its neighbours'); it then gets the k most similar of the others."""
        query = F.normalize(self._query(feats).float(), dim=1).cpu()  # [B, D]
        k = min(self.k, self.index.size(0))
        similarity = query @ self.index.T  # [B, N]
        if exclude is None:
            return similarity.topk(k, dim=1).indices.tolist()  # [B, k]
        if len(exclude) != similarity.size(0):
            raise ValueError(f"exclude: one list of rows per image ({similarity.size(0)}), not {len(exclude)}")
        for i, rows in enumerate(exclude):
            similarity[i, list(rows)] = float("-inf")
        values, indices = similarity.topk(k, dim=1)  # [B, k]
        return [[j for j, v in zip(row, vals, strict=True) if v != float("-inf")]
                for row, vals in zip(indices.tolist(), values.tolist(), strict=True)]

    def _query(self, feats: dict[str, Tensor]) -> Tensor:
        """The images' global features that the index was made from: ``key``, or group 0's when the features
        came grouped (decode.flip switched on for one call of a single-encoder model: "0.global")."""
        for key in (self.key, "0.global"):
            if key in feats:
                return feats[key]
        raise KeyError(f"consensus reranking: no {self.key!r} among the features ({', '.join(feats)})")

    def _expected_agreement(self, beam_words: list[list[str]], probs: Tensor) -> Tensor:
        """[K] each beam's CIDEr-D against every other beam, weighted by the other's probability ``probs``."""
        vectors = [self.cider.vector(w) for w in beam_words]
        agree = torch.zeros(len(beam_words), len(beam_words), dtype=torch.float64)  # [K, K]; the diagonal stays 0
        for i, w in enumerate(beam_words):
            for j, v in enumerate(vectors):
                if i != j:
                    agree[i, j] = self.cider.score_against(w, [v])
        return agree @ probs  # [K]
