"""Consensus reranking: the beam that agrees with the nearest training images' captions wins, weight 0 changes
nothing, and the commands read the training captions they need (or say what is missing, in one line)."""

import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

from captioner.config import Config, with_decode_settings
from captioner.decoding import Hypothesis
from captioner.decoding.rerank import ConsensusReranker
from captioner.errors import CaptionerError
from conftest import untrained_model_file

TRAIN_CAPTIONS = [[["a", "dog", "runs", "on", "the", "grass"], ["a", "brown", "dog", "runs", "on", "grass"]],
                  [["a", "dog", "runs", "on", "grass"], ["the", "dog", "runs", "on", "the", "grass"]],
                  [["two", "people", "walk", "down", "a", "street"], ["people", "walk", "on", "a", "street"]],
                  [["a", "man", "rides", "a", "bike"], ["a", "man", "on", "a", "bicycle"]]]


def _train_feats() -> torch.Tensor:
    return torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # [4, D]


def _beams() -> tuple[list[Hypothesis], list[list[str]]]:
    words = [["two", "people", "walk", "on", "a", "street"], ["a", "dog", "runs", "on", "the", "grass"]]
    return [Hypothesis([5] * 6, -3.0, True), Hypothesis([6] * 6, -3.5, True)], words  # the first is likelier


def test_the_beam_that_agrees_with_the_nearest_images_wins():
    reranker = ConsensusReranker(_train_feats(), TRAIN_CAPTIONS, k=2, weight=1.0)
    beams, words = _beams()
    query = {"global": torch.tensor([[1.0, 0.05, 0.0], [0.0, 1.0, 0.1]])}  # near the dogs; near the street
    chosen = reranker.choose(query, [beams, beams], [words, words], length_penalty=1.0)
    assert chosen == [beams[1], beams[0]]


def test_weight_zero_keeps_the_beam_search_choice():
    reranker = ConsensusReranker(_train_feats(), TRAIN_CAPTIONS, k=2, weight=0.0)
    beams, words = _beams()
    query = {"global": torch.tensor([[1.0, 0.05, 0.0]])}
    assert reranker.choose(query, [beams], [words], length_penalty=1.0) == [beams[0]]


def test_minimum_bayes_risk_prefers_the_beam_the_other_beams_agree_with():
    words = [["a", "cat", "sleeps", "on", "a", "sofa"], ["a", "dog", "runs", "on", "the", "grass"],
             ["a", "dog", "runs", "on", "grass"], ["the", "dog", "runs", "on", "the", "grass"]]
    beams = [Hypothesis([4] * 6, -3.0, True), Hypothesis([6] * 6, -3.2, True), Hypothesis([6] * 5, -3.0, True),
             Hypothesis([6] * 6, -3.3, True)]  # the cat is likeliest per word
    query = {"global": torch.tensor([[0.0, 0.0, 1.0]])}  # near the bike: the neighbours back no beam
    plain = ConsensusReranker(_train_feats(), TRAIN_CAPTIONS, k=1, weight=0.0, mbr_weight=0.0)
    assert plain.choose(query, [beams], [words], length_penalty=1.0) == [beams[0]]
    mbr = ConsensusReranker(_train_feats(), TRAIN_CAPTIONS, k=1, weight=0.0, mbr_weight=1.0)
    agreement = mbr._expected_agreement(words, torch.full((4,), 0.25, dtype=torch.float64))
    assert agreement[0] < 0.01 < agreement[2] and agreement[1] == agreement.max()  # the cat agrees with nobody
    assert mbr.choose(query, [beams], [words], length_penalty=1.0) == [beams[1]]
    with pytest.raises(CaptionerError, match="decode.mbr_weight >= 0"):
        with_decode_settings(Config(), ["decode.mbr_weight=-1"])


def test_an_ensemble_across_encoders_finds_neighbours_by_its_first_encoder():
    reranker = ConsensusReranker(torch.eye(3), TRAIN_CAPTIONS[:3], k=1, weight=1.0, key="0.global")
    # by encoder 0 the query is nearest the street (image 2); encoder 1 (not read) would say the dogs
    query = {"0.global": torch.tensor([[0.0, 0.2, 1.0]]), "1.global": torch.tensor([[1.0, 0.0, 0.0]]),
             "0.grid": torch.zeros(1, 2, 5)}
    words = [["a", "dog", "runs", "on", "the", "grass"], ["two", "people", "walk", "on", "a", "street"]]
    beams = [Hypothesis([6] * 6, -3.0, True), Hypothesis([5] * 6, -3.5, True)]  # the dog is likelier
    assert reranker.choose(query, [beams], [words], length_penalty=1.0) == [beams[1]]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "captioner.cli", *args], capture_output=True, text=True,
                          timeout=180)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from captioner.data.synth import make_synth

    root = tmp_path_factory.mktemp("rerank")
    data = make_synth(root / "synth", n_train=12, n_val=5, n_test=2, size=32)
    return data, untrained_model_file(root / "model.pt", "soft"), root / "cache"


def _evaluate(data, model, cache, out, *settings):
    result = run_cli("evaluate", "--model", str(model), "--data", str(data), "--split", "val", "--no-meteor",
                     "--cache", str(cache), "--no-progress", "--out", str(out), "--max-len", "8", *settings)
    assert result.returncode == 0, result.stderr
    return [c["caption"] for c in json.loads(out.read_text())["captions"]]


def test_evaluate_reranks_with_the_training_split_and_weight_zero_changes_nothing(synth, tmp_path):
    data, model, cache = synth
    lp = ("--set", "decode.length_penalty=1.0")
    plain = _evaluate(data, model, cache, tmp_path / "plain.json", *lp)
    same = _evaluate(data, model, cache, tmp_path / "w0.json", *lp, "--set", "decode.consensus=true",
                     "--set", "decode.consensus_weight=0", "--set", "decode.consensus_k=3")
    reranked = _evaluate(data, model, cache, tmp_path / "w.json", *lp, "--set", "decode.consensus=true",
                         "--set", "decode.consensus_weight=100", "--set", "decode.consensus_k=3")
    assert same == plain
    assert len(reranked) == len(plain)  # (an untrained model's beams: which one wins is not asserted)


def test_caption_needs_the_training_captions_to_rerank(synth, tmp_path):
    data, model, _ = synth
    image = tmp_path / "photo.png"
    Image.new("RGB", (64, 64), (30, 30, 200)).save(image)
    missing = run_cli("caption", "--model", str(model), "--set", "decode.consensus=true", str(image))
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert missing.stderr.strip().splitlines()[-1].endswith("caption and serve from --consensus DATA")
    ok = run_cli("caption", "--model", str(model), "--consensus", str(data), "--max-len", "8", str(image))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip()


@pytest.mark.slow  # runs an experiments/ study
def test_the_study_script_tables_every_setting(synth, tmp_path):
    import os
    from pathlib import Path

    data, model, cache = synth
    script = Path(__file__).resolve().parents[1] / "experiments" / "consensus_study.py"
    result = subprocess.run([sys.executable, str(script), "--model", str(model), "--data", str(data), "--k", "2,4",
                             "--weights", "0,0.5", "--mbr", "0,1", "--length-penalties", "0.5",
                             "--set", "decode.length_penalty=1.0"], capture_output=True,
                            text=True, timeout=300, env={**os.environ, "CAPTIONER_CACHE": str(cache)})
    assert result.returncode == 0, result.stderr[-2000:]
    table = result.stdout.split("\n\n")[-1].strip().splitlines()
    # length penalty, k, weight, MBR weight; weight 0 reads no neighbours: one row for all k
    assert [row.split(" | ")[:4] for row in table[2:]] == [
        ["| 0.5", "2", "0", "0"], ["| 0.5", "2", "0", "1"], ["| 0.5", "2", "0.5", "0"], ["| 0.5", "2", "0.5", "1"],
        ["| 0.5", "4", "0.5", "0"], ["| 0.5", "4", "0.5", "1"]]


def test_export_stores_consensus_reranking_only_with_its_index(synth, tmp_path):
    _, model, _ = synth
    run = run_cli("export", str(model), str(tmp_path / "out.pt"), "--set", "decode.consensus=true")
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert "decode.consensus needs a dataset's training captions: store them with --consensus DATA" in run.stderr
    assert not (tmp_path / "out.pt").exists()


def test_a_model_file_carries_its_consensus_index(synth, tmp_path, monkeypatch):
    """export --consensus DATA: the file reranks by itself as load(consensus=DATA) does (the features in int8),
    consensus=False switches it off, and evaluate uses the carried index, not the data's training split."""
    import torch.nn.functional as F

    import captioner
    from captioner import model_features
    from captioner.checkpoint import load_model

    data, model, cache = synth
    monkeypatch.setenv("CAPTIONER_CACHE", str(cache))
    carried = tmp_path / "carried.pt"
    settings = ("decode.consensus_k=3", "decode.consensus_weight=100", "decode.max_len=8")
    run = run_cli("export", str(model), str(carried), "--consensus", str(data), "--cache", str(cache),
                  *(a for s in settings for a in ("--set", s)))
    assert run.returncode == 0, run.stderr
    assert "consensus index" in run.stdout
    index, built = load_model(carried).consensus_index, model_features.consensus_index(load_model(model), data)
    assert index["captions"] == built["captions"] and len(index["captions"]) == 12
    assert F.cosine_similarity(index["features"], built["features"].float()).min() > 0.999
    photos = [data / "images" / name for name in (data / "splits" / "val.txt").read_text().split()]
    from_file = [c.text for c in captioner.load(carried, device="cpu")(photos)]
    from_data = captioner.load(model, device="cpu", consensus=data, consensus_k=3, consensus_weight=100, max_len=8)
    assert from_file == [c.text for c in from_data(photos)]
    plain = captioner.load(model, device="cpu", max_len=8)(photos)
    assert from_file != [c.text for c in plain]  # (the index reranks)
    assert [c.text for c in captioner.load(carried, device="cpu", consensus=False)(photos)] == [c.text for c in plain]
    cap = captioner.load(carried, device="cpu")
    assert cap.model.config.decode.consensus
    assert [c.text for c in cap(photos, consensus_weight=0)] == [c.text for c in plain]  # for this call only
    assert [c.text for c in cap(photos)] == from_file

    damaged = torch.load(carried, weights_only=True)
    damaged["consensus"]["captions"] = damaged["consensus"]["captions"][:-100]  # cut short
    torch.save(damaged, tmp_path / "damaged.pt")
    run = run_cli("caption", "--model", str(tmp_path / "damaged.pt"), str(photos[0]))
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1].endswith("damaged.pt: its consensus index is damaged (Compressed "
                                                        "data ended before the end-of-stream marker was reached)")

    def no_data(*args, **kwargs):
        raise AssertionError("read the data's training split")

    monkeypatch.setattr(model_features, "_training_globals", no_data)
    report = captioner.evaluate(carried, data, "val", meteor=False, tokenizer="python", device="cpu")
    assert [c["caption"] for c in report["captions"]] == from_file


def test_the_web_demo_reranks_as_caption_does(synth, tmp_path, monkeypatch):
    import os

    from fastapi.testclient import TestClient

    from captioner.serve.app import create_app

    data, model, cache = synth
    strong = tmp_path / "strong.pt"  # the consensus term outweighs the beams' scores: reranking shows
    assert run_cli("export", str(model), str(strong), "--set", "decode.consensus_weight=100").returncode == 0
    monkeypatch.setenv("CAPTIONER_CACHE", str(cache))
    images = []
    for i, colour in enumerate([(30, 30, 200), (200, 40, 40), (40, 160, 40)]):
        images.append(tmp_path / f"photo{i}.png")
        Image.new("RGB", (64, 64), colour).save(images[-1])
    env = {**os.environ, "CAPTIONER_CACHE": str(cache)}

    def cli(*extra):
        run = subprocess.run([sys.executable, "-m", "captioner.cli", "caption", "--model", str(strong), *extra,
                              *map(str, images)], capture_output=True, text=True, timeout=180, env=env)
        assert run.returncode == 0, run.stderr
        return [line.split(": ", 1)[1] for line in run.stdout.strip().splitlines()]

    def served(**options):
        with TestClient(create_app({"m": strong}, **options)) as client:
            bodies = [client.post("/api/caption", files={"file": (p.name, p.read_bytes(), "image/png")}).json()
                      for p in images]
        return [b["caption"] for b in bodies], {b["reranked"] for b in bodies}

    reranked, flags = served(consensus=data)
    plain, plain_flags = served()
    assert flags == {True} and plain_flags == {False}
    assert reranked == cli("--consensus", str(data))
    assert plain == cli()
    assert reranked != plain


@pytest.mark.slow  # runs two experiments/ studies
def test_the_signals_script_tables_the_oracle_and_every_weight(synth, tmp_path):
    import os
    from pathlib import Path

    data, model, cache = synth
    experiments = Path(__file__).resolve().parents[1] / "experiments"
    env = {**os.environ, "CAPTIONER_CACHE": str(cache)}

    def table(script, *extra):
        result = subprocess.run([sys.executable, str(experiments / script), "--model", str(model), "--data",
                                 str(data), "--set", "decode.length_penalty=1.0", *extra], capture_output=True,
                                text=True, timeout=300, env=env)
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout, [row.split(" | ") for row in result.stdout.split("\n\n")[-1].strip().splitlines()[2:]]

    out, rows = table("rerank_signals.py", "--length-penalties", "1", "--cider", "0,0.5", "--bleu", "0,1",
                      "--match", "0,1", "--match-epochs", "1")
    assert "matcher: text-to-image recall@1" in out
    assert rows[0][0] == "| oracle (own references' BLEU-4)"
    assert [r[:4] for r in rows[1:]] == [["| 1", c, b, m] for c in ("0", "0.5") for b in ("0", "1") for m in ("0", "1")]
    # every weight 0: plain beam search, the row the consensus study prints for weight 0
    _, plain = table("consensus_study.py", "--k", "30", "--weights", "0")
    assert rows[1][4:] == plain[0][4:]


def test_flip_for_one_call_of_a_consensus_captioner(synth, tmp_path, monkeypatch):
    import captioner

    data, model, cache = synth
    monkeypatch.setenv("CAPTIONER_CACHE", str(cache))
    photo = tmp_path / "photo.png"
    Image.new("RGB", (64, 64), (30, 30, 200)).save(photo)
    cap = captioner.load(model, device="cpu", consensus=data)
    flipped = cap(photo, flip=True)  # the features come as two views: the neighbours are the plain view's
    assert flipped.error is None and flipped.text
    assert cap(photo).text  # and back to one view
    both = captioner.load(model, device="cpu", consensus=data, flip=True)
    assert both(photo).text == flipped.text


def test_scoring_the_beams_at_once_equals_one_by_one():
    """CiderD.scores_against (the references indexed once by n-gram) scores each caption of a batch as it scores
    it alone (no caption's n-grams leak into another's score; pycocoevalcap's numbers: tests/test_scst.py)."""
    import random

    import numpy as np

    from captioner.metrics.cider_reward import CiderD

    rng = random.Random(0)
    words = "a dog runs on the grass man rides bike two people walk street brown red in of".split()
    cider = CiderD({str(i): [[rng.choice(words) for _ in range(rng.randint(3, 12))] for _ in range(5)]
                    for i in range(50)})
    for _ in range(10):
        refs = [v for j in rng.sample(range(50), 8) for v in cider.refs[str(j)]]
        beams = [[rng.choice(words) for _ in range(rng.randint(1, 12))] for _ in range(5)] + [[]]
        one_by_one = [cider.scores_against([w], refs)[0] for w in beams]
        assert np.allclose(cider.scores_against(beams, refs), one_by_one, rtol=1e-12, atol=1e-12)
        assert len(set(one_by_one)) > 1  # (distinct scores: a mix-up would show)
