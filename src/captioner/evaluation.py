"""Scoring a model on a dataset's split: caption every image from its features, score the captions against
the references with coco-caption (pycocoevalcap), write the report and the HTML gallery."""

from pathlib import Path

import torch

from captioner.captioning import decode_batches, search_size
from captioner.io import write_json_atomic
from captioner.metrics.coco import METRIC_NAMES, score_corpus
from captioner.model import CaptionModel
from captioner.model_features import consensus_reranker, split_features


def evaluate(model: CaptionModel, data: str | Path, split: str = "val", beam_size: int | None = None,
             max_len: int | None = None, cache_root: str | Path | None = None, out: str | Path | None = None,
             tokenizer: str = "auto", metrics: tuple[str, ...] = ("bleu", "meteor", "rouge", "cider"),
             limit: int | None = None, progress: bool = True, report_dir: str | Path | None = None,
             encoder=None) -> dict:
    """Caption every image of a split (features: :func:`split_features`) and score it with coco-caption.

    ``beam_size`` / ``max_len``: the model's decoding settings unless given (:func:`search_size`); ``out``: JSON
    file for the metrics and per-image captions/scores; ``report_dir``: HTML gallery folder; ``encoder``: the
    model's encoder already built, for a model that carries one (its features are computed, not cached).
    """
    chosen, feats, failed = split_features(model, data, split, cache_root, limit, progress, encoder)
    reranker = None
    if model.config.decode.consensus:  # with the index the model file carries, else the data's training split
        reranker = consensus_reranker(model, None if model.consensus_index else data, cache_root, progress)
    return score_split(model, chosen, feats, failed, str(data), split, beam_size, max_len, out, tokenizer, metrics,
                       report_dir, reranker)


def score_split(model: CaptionModel, chosen: list, feats: dict[str, torch.Tensor], failed: list[str], data: str,
                split: str, beam_size: int | None = None, max_len: int | None = None,
                out: str | Path | None = None,
                tokenizer: str = "auto", metrics: tuple[str, ...] = ("bleu", "meteor", "rouge", "cider"),
                report_dir: str | Path | None = None, reranker=None) -> dict:
    """:func:`evaluate` once the features are there: decode ``feats`` (one row per record of ``chosen``),
    score against the records' captions, and write the report. ``beam_size`` / ``max_len``: :func:`search_size`."""
    beam_size, max_len = search_size(model, beam_size, max_len)
    hyps = decode_batches(model, feats, beam_size, max_len, reranker=reranker)
    candidates = {r.name: " ".join(model.vocab.decode(h.tokens)) for r, h in zip(chosen, hyps, strict=True)}
    references = {r.name: r.captions_raw for r in chosen}
    corpus, per_image = score_corpus(candidates, references, metrics=metrics, tokenizer=tokenizer)
    report = {
        "data": data, "split": split, "images": len(chosen), "beam_size": beam_size,
        "metrics": {k: corpus[k] for k in METRIC_NAMES if k in corpus},
        "skipped": failed,
        "captions": [{"image": r.name, "caption": candidates[r.name], "references": references[r.name],
                      "scores": per_image[r.name]} for r in chosen],
    }
    if out:
        write_json_atomic(out, report)
    if report_dir:
        from captioner.viz.report import write_report

        write_report(report, report_dir, {r.name: r.image for r in chosen})
    return report
