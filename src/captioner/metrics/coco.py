"""BLEU-1..4, METEOR, ROUGE-L and CIDEr-D through pycocoevalcap, the scorer the papers use.

We do not re-implement any metric: this module only prepares pycocoevalcap's inputs (tokenisation) and
names its outputs. Two tokenisers are available:

- ``"ptb"``: pycocoevalcap's own Stanford PTB tokenizer (needs Java), what published numbers use;
- ``"python"``: :func:`captioner.data.tokenize.tokenize`, a pure-Python copy of it, for validation during
  training and for machines without Java.

CIDEr-D's IDF comes from the references of the scored set, so always score a whole split at once.
"""

import logging
import shutil
from collections.abc import Mapping, Sequence

log = logging.getLogger("captioner")

METRIC_NAMES = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D")
ALL = ("bleu", "meteor", "rouge", "cider")


def java_available() -> bool:
    return shutil.which("java") is not None


def tokenize_corpus(
    captions: Mapping[str, Sequence[str]], tokenizer: str = "auto"
) -> dict[str, list[str]]:
    """Tokenise ``{key: [caption, ...]}`` into ``{key: ["tok tok tok", ...]}`` as coco-caption does."""
    if tokenizer == "auto":
        tokenizer = "ptb" if java_available() else "python"
    if tokenizer == "ptb":
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        keyed = {k: [{"caption": c} for c in caps] for k, caps in captions.items()}
        return PTBTokenizer().tokenize(keyed)
    if tokenizer == "python":
        from captioner.data.tokenize import tokenize

        return {k: [" ".join(tokenize(c)) for c in caps] for k, caps in captions.items()}
    raise ValueError(f"unknown tokenizer {tokenizer!r} (use 'auto', 'ptb' or 'python')")


def score_tokenized(
    gts: Mapping[str, list[str]],
    res: Mapping[str, list[str]],
    metrics: Sequence[str] = ALL,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Score already tokenised captions. Returns (corpus scores, per-image scores).

    ``gts``: key -> reference strings; ``res``: key -> [one candidate string].
    """
    gts, res = dict(gts), dict(res)
    corpus: dict[str, float] = {}
    per_image: dict[str, dict[str, float]] = {k: {} for k in res}
    keys = list(res)
    if "bleu" in metrics:
        from pycocoevalcap.bleu.bleu import Bleu

        scores, per = Bleu(4).compute_score(gts, res, verbose=0)
        for n in range(4):  # one index per n-gram order: BLEU-2 is scores[1], never scores[0]
            corpus[f"BLEU-{n + 1}"] = float(scores[n])
            for k, s in zip(keys, per[n], strict=True):
                per_image[k][f"BLEU-{n + 1}"] = float(s)
    if "meteor" in metrics:
        if java_available():
            from pycocoevalcap.meteor.meteor import Meteor

            meteor = Meteor()
            score, per = meteor.compute_score(gts, res)
            corpus["METEOR"] = float(score)
            for k, s in zip(keys, per, strict=True):
                per_image[k]["METEOR"] = float(s)
            _close_meteor(meteor)
        else:
            log.warning("METEOR skipped: it needs Java (apt-get install -y default-jre-headless)")
    if "rouge" in metrics:
        from pycocoevalcap.rouge.rouge import Rouge

        score, per = Rouge().compute_score(gts, res)
        corpus["ROUGE-L"] = float(score)
        for k, s in zip(keys, per, strict=True):
            per_image[k]["ROUGE-L"] = float(s)
    if "cider" in metrics:
        from pycocoevalcap.cider.cider import Cider  # coco-caption's Cider is CIDEr-D (sigma 6, clipping)

        score, per = Cider().compute_score(gts, res)
        corpus["CIDEr-D"] = float(score)
        for k, s in zip(keys, per, strict=True):
            per_image[k]["CIDEr-D"] = float(s)
    return corpus, per_image


def score_corpus(
    candidates: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    metrics: Sequence[str] = ALL,
    tokenizer: str = "auto",
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Score raw candidate captions against raw references, whole corpus at once.

    ``candidates``: image key -> generated caption; ``references``: image key -> human captions.
    Returns (corpus scores keyed by METRIC_NAMES, per-image scores).
    """
    if set(candidates) != set(references):
        missing = sorted(set(references) ^ set(candidates))[:3]
        raise ValueError(f"candidates and references cover different images, e.g. {missing}")
    keys = sorted(candidates)
    gts = tokenize_corpus({k: list(references[k]) for k in keys}, tokenizer)
    res = tokenize_corpus({k: [candidates[k]] for k in keys}, tokenizer)
    return score_tokenized(gts, res, metrics)


def _close_meteor(meteor) -> None:
    """Stop METEOR's JVM now rather than at garbage collection."""
    proc = getattr(meteor, "meteor_p", None)
    if proc is None:
        return
    with meteor.lock:  # pycocoevalcap's __del__ repeats these steps harmlessly
        proc.stdin.close()
        proc.kill()
        proc.wait()
