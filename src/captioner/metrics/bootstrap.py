"""Is model B better than model A on the same images, or is the gap noise? A paired bootstrap over the
per-image results of two evaluation reports (``captioner evaluate --out``), as in Koehn (2004).

Each resample draws the images with replacement and recomputes the corpus metric of both models on that same
draw; the spread of B - A over the resamples gives its 95 % interval. CIDEr-D and ROUGE-L are means of
per-image scores in coco-caption, so they resample exactly (CIDEr-D's document frequencies stay those of the
whole split). BLEU-4 is a corpus statistic: each image contributes its n-gram counts and lengths, and the score
is recomputed from their sums as pycocoevalcap does. METEOR is left out: its corpus score is the Java scorer's
aggregate, not a function of per-image values.

>>> rows, images = compare_reports("a.json", "b.json")   # rows: [{"metric", "a", "b", "diff", "low", ...}]
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from captioner.errors import file_error

ORDER = 4  # BLEU-4
TINY, SMALL = 1e-15, 1e-9  # pycocoevalcap's guards against a zero count / zero length
MEAN_METRICS = ("CIDEr-D", "ROUGE-L")  # coco-caption: the mean of per-image scores
METRICS = ("BLEU-4", *MEAN_METRICS)


def bleu_counts(candidate: str, references: list[str]) -> np.ndarray:
    """One image's BLEU sufficient statistics from tokenised strings: ``[testlen, reflen, guess_1..4,
    correct_1..4]``, reflen being the reference length closest to the candidate's (pycocoevalcap's
    "closest" option)."""
    from pycocoevalcap.bleu.bleu_scorer import cook_refs, cook_test

    c = cook_test(candidate, cook_refs(references, n=ORDER), eff="closest", n=ORDER)
    return np.array([c["testlen"], c["reflen"], *c["guess"], *c["correct"]], dtype=np.float64)


def bleu4_from_counts(sums: np.ndarray) -> np.ndarray:
    """Corpus BLEU-4 from summed :func:`bleu_counts` (``[..., 10]`` -> ``[...]``), pycocoevalcap's formula."""
    testlen, reflen = sums[..., 0], sums[..., 1]
    guess, correct = sums[..., 2 : 2 + ORDER], sums[..., 2 + ORDER :]
    bleu = np.prod((correct + TINY) / (guess + SMALL), axis=-1) ** (1.0 / ORDER)
    ratio = (testlen + TINY) / (reflen + SMALL)
    brevity = np.where(ratio < 1, np.exp(1 - 1 / np.minimum(ratio, 1)), 1.0)
    return bleu * brevity


def paired_bootstrap(rows_a: np.ndarray, rows_b: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray],
                     resamples: int = 1000, seed: int = 0) -> dict:
    """B - A on the full set and over ``resamples`` paired resamples of its images.

    ``rows_*``: ``[images, d]`` per-image values whose column sums the ``statistic`` turns into the corpus
    score (it receives ``[..., d]`` sums and the resample's image count is always the full count).
    Returns ``{"a", "b", "diff", "low", "high", "p_not_better"}``: the 95 % percentile interval of the
    difference and the fraction of resamples in which B does not beat A.
    """
    m = len(rows_a)
    counts = np.random.default_rng(seed).multinomial(m, np.full(m, 1.0 / m), size=resamples)  # [R, images]
    a, b = statistic(rows_a.sum(0)), statistic(rows_b.sum(0))
    diffs = statistic(counts @ rows_b) - statistic(counts @ rows_a)  # [R]
    low, high = np.percentile(diffs, [2.5, 97.5])
    return {"a": float(a), "b": float(b), "diff": float(b - a), "low": float(low), "high": float(high),
            "p_not_better": float((diffs <= 0).mean())}


def load_report(path: str | Path) -> dict:
    """A ``captioner evaluate --out`` file, checked to hold per-image captions, references and scores."""
    path = Path(path)
    try:
        report = json.loads(path.read_text())
    except OSError as e:
        raise file_error(path, f"cannot read it ({e.strerror or e})") from None
    except ValueError as e:
        raise file_error(path, f"not an evaluation report of `captioner evaluate --out` ({e})") from None
    entries_of(report, path)
    return report


def entries_of(report: dict, source: str | Path) -> dict[str, dict]:
    """``{image: {"caption", "references", "scores"}}`` of a report; ``source`` names it in errors."""
    try:
        entries = {c["image"]: c for c in report["captions"]}
        for c in entries.values():
            if not {"caption", "references", "scores"} <= c.keys():
                raise KeyError(f"{c['image']} has no caption, references or scores")
    except (KeyError, TypeError) as e:
        raise file_error(source, f"not an evaluation report of `captioner evaluate --out` ({type(e).__name__}: "
                         f"{str(e)[:80]})") from None
    if not entries:
        raise file_error(source, "the report has no captioned images")
    return entries


def compare_reports(path_a: str | Path, path_b: str | Path, resamples: int = 1000, seed: int = 0,
                    tokenizer: str = "auto", metrics: tuple[str, ...] = METRICS) -> tuple[list[dict], int]:
    """Paired bootstrap of ``metrics`` between two report files on the same images.
    Returns (one row per metric, the number of images)."""
    return compare(load_report(path_a), load_report(path_b), resamples, seed, tokenizer, metrics,
                   names=(path_a, path_b))


def compare(report_a: dict, report_b: dict, resamples: int = 1000, seed: int = 0, tokenizer: str = "auto",
            metrics: tuple[str, ...] = METRICS, names=("A", "B")) -> tuple[list[dict], int]:
    """:func:`compare_reports` on reports already read (``names`` name them in errors)."""
    a, b = entries_of(report_a, names[0]), entries_of(report_b, names[1])
    if set(a) != set(b):
        only_a, only_b = len(set(a) - set(b)), len(set(b) - set(a))
        raise file_error(names[1], f"scores other images than {names[0]} ({only_a} only there, {only_b} only "
                         "here): evaluate both models on the same split and --limit")
    keys = sorted(a)
    if any(b[k]["references"] != a[k]["references"] for k in keys):
        raise file_error(names[1], f"its references differ from {names[0]}'s: not the same dataset")
    rows = []
    if "BLEU-4" in metrics:
        from captioner.metrics.coco import tokenize_corpus

        refs = tokenize_corpus({k: a[k]["references"] for k in keys}, tokenizer)
        counts = []
        for entries in (a, b):
            caps = tokenize_corpus({k: [entries[k]["caption"]] for k in keys}, tokenizer)
            counts.append(np.stack([bleu_counts(caps[k][0], refs[k]) for k in keys]))  # [images, 10]
        rows.append({"metric": "BLEU-4", **paired_bootstrap(*counts, bleu4_from_counts, resamples, seed)})
    m = len(keys)
    for metric in (x for x in MEAN_METRICS if x in metrics):
        if not all(metric in a[k]["scores"] and metric in b[k]["scores"] for k in keys):
            continue  # a report scored without this metric
        per = [np.array([[e[k]["scores"][metric]] for k in keys], dtype=np.float64) for e in (a, b)]  # [images, 1]
        rows.append({"metric": metric, **paired_bootstrap(*per, lambda s: s[..., 0] / m, resamples, seed)})
    return rows, m


def significant(row: dict) -> bool:
    """Whether the 95 % interval of B - A excludes zero."""
    return row["low"] > 0 or row["high"] < 0

