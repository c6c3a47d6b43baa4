"""Consensus reranking of the beam: choose among the K final beams the caption that agrees best with what
people wrote about the most similar training images.

Devlin et al. 2015 ("Language Models for Image Captioning: The Quirks and What Works") and Mao et al. 2015
(m-RNN) rerank a model's candidates by their similarity to the captions of the image's nearest training
neighbours. Here each of the K beams scores

    score / length ** length_penalty  +  weight x CIDEr-D(beam, captions of the k nearest training images)

(the first term is what plain beam search picks by; CIDEr-D with the training split's document frequencies),
and the beam with the highest sum is the caption. Neighbours: cosine similarity of the encoder's global
feature (an ensemble across encoders: of its first file's encoder; on Flickr8k, neighbours by the fine-tuned
Lite2 alone chose better captions than by Lite2 and Lite0 together). Only training captions are read; the image
being captioned needs no references.
"""

import torch.nn.functional as F
from torch import Tensor

from captioner.decoding.beam import Hypothesis
from captioner.metrics.cider_reward import CiderD


class ConsensusReranker:
    def __init__(self, index: Tensor, captions: list[list[list[str]]], k: int = 30, weight: float = 0.3,
                 key: str = "global"):
        """``index``: [N, D] the training images' global features (``key`` of the features the model decodes
        from: "global", or "0.global" for an ensemble across encoders); ``captions``: each image's tokenised
        captions, in the same order."""
        self.index = F.normalize(index.float(), dim=1).cpu()  # [N, D] unit vectors
        self.cider = CiderD({str(i): caps for i, caps in enumerate(captions)})
        self.k, self.weight, self.key = k, weight, key

    def choose(self, feats: dict[str, Tensor], nbest: list[list[Hypothesis]], words: list[list[list[str]]],
               length_penalty: float) -> list[Hypothesis]:
        """The chosen beam of each image; ``words``: the beams' captions as words, as ``nbest``."""
        query = F.normalize(feats[self.key].float(), dim=1).cpu()  # [B, D]
        k = min(self.k, self.index.size(0))
        neighbours = (query @ self.index.T).topk(k, dim=1).indices.tolist()  # [B, k] most similar first
        chosen = []
        for beams, beam_words, near in zip(nbest, words, neighbours, strict=True):
            refs = [v for j in near for v in self.cider.refs[str(j)]]
            totals = [h.score / max(1, len(h.tokens) + h.finished) ** length_penalty
                      + self.weight * self.cider.score_against(w, refs) for h, w in zip(beams, beam_words, strict=True)]
            chosen.append(beams[max(range(len(beams)), key=totals.__getitem__)])
        return chosen
