"""Metrics come from pycocoevalcap unchanged, with each n-gram order in its own column."""

import logging
import shutil

import pytest

from captioner.metrics import coco

CANDIDATES = {
    "1": "a dog runs across the grass .",
    "2": "two children are playing on the beach",
    "3": "a man in a red shirt rides a bike down the street",
    "4": "a brown dog is jumping over a log",
}
REFERENCES = {
    "1": ["A brown dog is running through the grass .", "A dog runs on a green lawn .",
          "The dog is running across the grassy field ."],
    "2": ["Two kids play in the sand at the beach .", "Children playing on a sandy beach .",
          "Two young children play near the ocean ."],
    "3": ["A man wearing a red shirt is riding his bicycle on the street .", "A cyclist in red rides down a road ."],
    "4": ["A dog leaps over a fallen log .", "A brown dog jumps over a log in the woods ."],
}
needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="needs Java")


def test_bleu_orders_are_distinct():
    scores, per_image = coco.score_corpus(CANDIDATES, REFERENCES, metrics=("bleu",), tokenizer="python")
    b = [scores[f"BLEU-{n}"] for n in range(1, 5)]
    assert b[0] > b[1] > b[2] > b[3] > 0  # BLEU-2 is not BLEU-1 printed twice
    assert set(per_image["1"]) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"}


@needs_java
def test_matches_pycocoevalcap_called_directly():
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in REFERENCES.items()})
    res = tok.tokenize({k: [{"caption": c}] for k, c in CANDIDATES.items()})
    expected = dict(zip(["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"], Bleu(4).compute_score(gts, res, verbose=0)[0],
                        strict=True))
    expected["METEOR"] = Meteor().compute_score(gts, res)[0]
    expected["ROUGE-L"] = Rouge().compute_score(gts, res)[0]
    expected["CIDEr-D"] = Cider().compute_score(gts, res)[0]
    ours, _ = coco.score_corpus(CANDIDATES, REFERENCES, tokenizer="ptb")
    assert set(ours) == set(expected)
    for name, value in expected.items():
        assert ours[name] == pytest.approx(value, abs=1e-6), name
    python_tok, _ = coco.score_corpus(CANDIDATES, REFERENCES, metrics=("bleu", "rouge", "cider"), tokenizer="python")
    for name, value in python_tok.items():  # our tokenizer gives the same numbers without Java
        assert value == pytest.approx(expected[name], abs=1e-6), name


def test_meteor_skipped_without_java(monkeypatch, caplog):
    monkeypatch.setattr(coco.shutil, "which", lambda name: None)
    with caplog.at_level(logging.WARNING, logger="captioner"):
        scores, _ = coco.score_corpus(CANDIDATES, REFERENCES)
    assert "METEOR" not in scores and "CIDEr-D" in scores
    assert any("METEOR skipped" in r.message for r in caplog.records)


def test_mismatched_keys_rejected():
    with pytest.raises(ValueError, match="different images"):
        coco.score_corpus({"1": "a dog"}, {"2": ["a dog"]})
