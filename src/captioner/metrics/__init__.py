"""Caption metrics exactly as coco-caption (pycocoevalcap) computes them."""

from captioner.metrics.coco import METRIC_NAMES, score_corpus

__all__ = ["METRIC_NAMES", "score_corpus"]
