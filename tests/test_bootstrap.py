"""`captioner compare`: the paired bootstrap reproduces pycocoevalcap's corpus scores on the full set, finds a
real gap significant and no gap insignificant, and refuses reports it cannot pair."""

import json
import random

import numpy as np
import pytest
from pycocoevalcap.bleu.bleu import Bleu

from captioner.cli import main
from captioner.errors import CaptionerError
from captioner.metrics.bootstrap import bleu4_from_counts, bleu_counts, compare_reports, paired_bootstrap
from captioner.metrics.coco import score_corpus

WORDS = "a the dog man woman runs on in grass water red blue ball with two people street".split()


def _corpus(n, seed=0):
    rng = random.Random(seed)
    refs = {f"img{i}.jpg": [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 12))) for _ in range(5)]
            for i in range(n)}
    return rng, refs


def _report(path, candidates, refs):
    """A report as `captioner evaluate --out` writes it, scored by pycocoevalcap."""
    corpus, per = score_corpus(candidates, refs, ("bleu", "rouge", "cider"), tokenizer="python")
    path.write_text(json.dumps({"metrics": corpus, "captions": [
        {"image": k, "caption": candidates[k], "references": refs[k], "scores": per[k]} for k in sorted(refs)]}))
    return path, corpus


def test_bleu4_from_summed_counts_equals_pycocoevalcap():
    rng, refs = _corpus(120)
    cands = {k: " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12))) for k in refs}
    cands["img0.jpg"] = refs["img0.jpg"][2]  # one exact match
    sums = sum(bleu_counts(cands[k], refs[k]) for k in refs)
    theirs, _ = Bleu(4).compute_score(refs, {k: [c] for k, c in cands.items()}, verbose=0)
    assert bleu4_from_counts(sums) == pytest.approx(theirs[3], rel=1e-12)


def test_identical_models_differ_by_nothing():
    rows = np.random.default_rng(0).random((50, 1))
    r = paired_bootstrap(rows, rows.copy(), lambda s: s[..., 0] / 50, resamples=200)
    assert r["diff"] == 0 and r["low"] == 0 and r["high"] == 0 and r["p_not_better"] == 1.0


def test_compare_finds_a_real_gap_and_reproduces_the_reports(tmp_path):
    rng, refs = _corpus(200, seed=1)
    poor = {k: " ".join(rng.choice(WORDS) for _ in range(8)) for k in refs}  # random words
    good = {k: refs[k][0] if i % 2 else poor[k] for i, k in enumerate(refs)}  # half the images: a reference
    a, scores_a = _report(tmp_path / "a.json", poor, refs)
    b, scores_b = _report(tmp_path / "b.json", good, refs)
    rows, images = compare_reports(a, b, resamples=300, tokenizer="python")
    assert images == 200 and [r["metric"] for r in rows] == ["BLEU-4", "CIDEr-D", "ROUGE-L"]
    for r in rows:  # the full-set scores are the reports' own
        assert r["a"] == pytest.approx(scores_a[r["metric"]], rel=1e-9)
        assert r["b"] == pytest.approx(scores_b[r["metric"]], rel=1e-9)
        assert r["low"] > 0 and r["p_not_better"] == 0  # B is better on every resample
    swapped, _ = compare_reports(b, a, resamples=300, tokenizer="python")
    assert all(r["high"] < 0 and r["p_not_better"] == 1 for r in swapped)


def test_a_small_gap_on_few_images_is_within_noise(tmp_path, capsys):
    rng, refs = _corpus(30, seed=2)
    a_caps = {k: " ".join(rng.choice(WORDS) for _ in range(8)) for k in refs}
    b_caps = dict(a_caps, **{"img0.jpg": refs["img0.jpg"][0]})  # one image of thirty improved
    a, _ = _report(tmp_path / "a.json", a_caps, refs)
    b, _ = _report(tmp_path / "b.json", b_caps, refs)
    main(["compare", str(a), str(b), "--tokenizer", "python", "--resamples", "300"])
    out = capsys.readouterr().out
    assert "CIDEr-D" in out and "within noise" in out and "30 images" in out


def test_reports_that_cannot_be_paired_are_refused(tmp_path):
    _, refs = _corpus(10)
    cands = {k: "a dog" for k in refs}
    a, _ = _report(tmp_path / "a.json", cands, refs)
    fewer = {k: v for k, v in refs.items() if k != "img3.jpg"}
    b, _ = _report(tmp_path / "b.json", {k: cands[k] for k in fewer}, fewer)
    with pytest.raises(CaptionerError, match=r"b\.json: scores other images than .*a\.json \(1 only there"):
        compare_reports(a, b, tokenizer="python")
    (tmp_path / "bad.json").write_text('{"captions": [{"image": "x.jpg"}]}')
    with pytest.raises(CaptionerError, match=r"bad\.json: not an evaluation report"):
        compare_reports(a, tmp_path / "bad.json", tokenizer="python")


def test_cli_error_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["compare", str(tmp_path / "none.json"), str(tmp_path / "none.json")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "none.json: cannot read it" in err


def test_report_table_has_a_row_per_report_with_its_intervals(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("report_table", Path(__file__).parents[1] / "tools" / "report_table.py")
    report_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report_table)
    rng, refs = _corpus(200)
    good = {k: v[0] for k, v in refs.items()}  # one of its references: a real gain
    noise = {k: " ".join(rng.choice(WORDS) for _ in range(8)) for k in refs}
    a, corpus_a = _report(tmp_path / "a.json", noise, refs)
    b, corpus_b = _report(tmp_path / "b.json", good, refs)
    report_table.main([f"baseline={a}", f"better={b}", str(a), "--resamples", "200", "--tokenizer", "python"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5 and lines[2].startswith("| baseline | ") and lines[3].startswith("| better | ")
    cells = [c.strip() for c in lines[3].strip("|").split("|")]
    assert cells[4] == f"{100 * corpus_b['BLEU-4']:.1f}" and cells[7] == f"{100 * corpus_b['CIDEr-D']:.1f}"
    assert cells[8].startswith("+") and "(noise)" not in cells[8]  # BLEU-4 vs baseline: significant
    assert lines[4].startswith(f"| {a} | ") and lines[4].endswith("(noise) |")  # the baseline against itself
    report_table.main([f"alone={b}"])  # one report: its row, no comparison
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[2].startswith("| alone | ") and lines[2].endswith("| | |")
    with pytest.raises(SystemExit, match="report_table.py: .*missing.json"):
        report_table.main([str(a), str(tmp_path / "missing.json")])
