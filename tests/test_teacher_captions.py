"""recipes/teacher_captions.py: the teacher's captions are what evaluate decodes (ensemble across encoders, flip,
logprob), consensus reranking never takes an image as its own neighbour, a killed run resumes with every image
once (and a complete file returns at once), another header is refused in one line, and the top-k words are the ensemble's distribution."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from captioner.data.synth import make_synth
from captioner.decoding.rerank import ConsensusReranker
from conftest import carrying_encoder_file, untrained_model_file

_spec = importlib.util.spec_from_file_location(
    "teacher_captions", Path(__file__).resolve().parents[1] / "recipes" / "teacher_captions.py")
teacher = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(teacher)

FLIP = ["--set", "decode.flip=true", "--set", "decode.ensemble_mean=logprob", "--set", "decode.length_penalty=0.7",
        "--set", "decode.block_ngram=2"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """a.pt reads the tiny encoder's cached features; b.pt carries its own encoder (no cache): a + b is an
    ensemble across encoders."""
    root = tmp_path_factory.mktemp("teacher")
    data = make_synth(root / "synth", n_train=12, n_val=4, n_test=2, size=32)
    a = untrained_model_file(root / "a.pt", "soft")
    return root, data, a, carrying_encoder_file(a, root / "b.pt"), root / "cache"


def run_teacher(files, out, *args):
    _, data, _, _, cache = files
    teacher.main(["--data", str(data), "--out", str(out), "--cache", str(cache), "--no-progress", "--max-len", "6",
                  *map(str, args)])
    lines = [json.loads(line) for line in Path(out).read_text().splitlines()]
    return lines[0], lines[1:]


@pytest.fixture(scope="module")
def flip_run(files):
    root, _, a, b, _ = files
    return run_teacher(files, root / "flip.jsonl", "--model", a, "--model", b, *FLIP, "--topk", "20",
                       "--batch", "5")


def test_the_captions_are_what_evaluate_writes(files, flip_run):
    from captioner.cli import main as captioner

    root, data, a, b, cache = files
    captioner(["evaluate", "--model", str(a), "--model", str(b), "--data", str(data), "--split", "train",
               "--tokenizer", "python", "--no-meteor", "--no-progress", "--cache", str(cache), "--max-len", "6",
               "--out", str(root / "r.json"), *FLIP])
    evaluated = {c["image"]: c["caption"] for c in json.loads((root / "r.json").read_text())["captions"]}
    header, records = flip_run
    assert {r["image"]: r["caption"] for r in records} == evaluated and len(records) == 12
    assert header["split"] == "train" and header["settings"]["flip"] is True and len(header["models"]) == 2
    assert {r["view"] for r in records} == {"flip"}


def test_topk_is_the_ensembles_distribution_at_each_position(files, flip_run):
    _, data, a, b, cache = files
    _, records = flip_run
    for r in records:
        ids, probs = r["topk"]["ids"], r["topk"]["probs"]
        assert len(ids) == len(probs) == len(r["tokens"]) + 1
        assert all(row == sorted(row, reverse=True) and sum(row) <= 1 + 1e-4 for row in probs)
        # the beam's score is the sum of its words' log-probabilities (all words are in the top 20)
        words = [p[i.index(w)] for w, i, p in zip(r["tokens"], ids, probs, strict=False)]
        assert sum(math.log(p) for p in words) == pytest.approx(r["score"], abs=0.01)
    # one position, computed from the four decoders (a, b, mirrored a, mirrored b) one by one
    model = teacher.models.with_settings(teacher.load_models([a, b]), FLIP[1::2])
    chosen, feats, _ = teacher.features.split_features(model, data, "train", cache, progress=False)
    feats = {k: v.float() for k, v in feats.items()}  # read from the cache, in memory
    image, t = 3, 2
    record = next(r for r in records if r["image"] == chosen[image].name)
    caption = torch.tensor([[model.vocab.start_id, *record["tokens"], model.vocab.end_id]])
    logps = []
    with torch.no_grad():
        for member, group in zip(list(model.decoder.members) * 2, [0, 1, 2, 3], strict=True):
            own = {k.split(".", 1)[1]: v[image : image + 1].float() for k, v in feats.items()
                   if k.startswith(f"{group}.")}
            logps.append(torch.log_softmax(member.teacher_forcing(own, caption)["logits"][0, t].float(), -1))
    p = torch.log_softmax(torch.stack(logps).mean(0), -1).exp()  # logprob mean: the normalised product
    p[[0, model.vocab.start_id, model.vocab.unk_id]] = 0.0  # the words beam search bans
    expected = p.topk(len(record["topk"]["ids"][t]))
    assert record["topk"]["ids"][t] == expected.indices.tolist()
    assert record["topk"]["probs"][t] == pytest.approx(expected.values.tolist(), abs=1e-4)


def test_consensus_never_takes_an_image_as_its_own_neighbour(files):
    from captioner.decoding import beam_search_nbest

    root, data, a, b, cache = files
    sets = [*FLIP, "--set", "decode.consensus=true", "--set", "decode.consensus_k=1",
            "--set", "decode.consensus_weight=100"]
    _, records = run_teacher(files, root / "consensus.jsonl", "--model", a, "--model", b, *sets)
    model = teacher.models.with_settings(teacher.load_models([a, b]), sets[1::2])
    chosen, feats, _ = teacher.features.split_features(model, data, "train", cache, progress=False)
    feats = {k: v.float() for k, v in feats.items()}  # read from the cache, in memory
    reranker = teacher.features.consensus_reranker(model, data, cache, progress=False)
    own = [[i] for i in range(len(chosen))]  # the index holds the training images in the same order
    assert reranker.neighbours(feats) == own  # what evaluate reranks with: each image's own captions
    assert all(i not in near for i, near in enumerate(reranker.neighbours(feats, own)))
    beam_size, _ = teacher.decoding.search_size(model)
    nbest = beam_search_nbest(teacher.decoding.decoding_decoder(model), feats, model.vocab.start_id,
                              model.vocab.end_id, beam_size=beam_size, max_len=6,
                              **model.config.decode.search_options(model.vocab))
    words = [[model.vocab.decode(h.tokens) for h in beams] for beams in nbest]
    picked = reranker.choose(feats, nbest, words, model.config.decode.length_penalty, exclude=own)
    assert [r["tokens"] for r in records] == [h.tokens for h in picked]


def test_excluded_rows_are_never_neighbours_and_the_default_is_unchanged():
    index = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    reranker = ConsensusReranker(index, [[["a"]], [["b"]], [["c"]]], k=2)
    query = {"global": torch.tensor([[1.0, 0.0], [0.0, 1.0]])}
    assert reranker.neighbours(query) == [[0, 1], [2, 1]]
    assert reranker.neighbours(query, [[0], []]) == [[1, 2], [2, 1]]
    assert reranker.neighbours(query, [[0, 1, 2], [2]]) == [[], [1, 0]]  # fewer than k left: what is left


def test_a_killed_run_resumes_with_every_image_once(files, tmp_path, monkeypatch):
    _, _, a, _, _ = files
    data = make_synth(tmp_path / "synth", n_train=7, n_val=2, n_test=1, size=32, seed=3)
    train = (data / "splits" / "train.txt").read_text().split()
    (data / "images" / train[1]).write_bytes(b"not an image")
    local = (tmp_path, data, a, None, tmp_path / "cache")
    out = tmp_path / "t.jsonl"
    _, first = run_teacher(local, out, "--model", a, "--limit", "3", "--topk", "2")
    assert [r["image"] for r in first] == [train[1], train[0], train[2], train[3]]
    assert "error" in first[0] and "not an image" in first[0]["error"]
    with open(out, "a") as f:
        f.write('{"image": "' + train[4] + '", "view": "pl')  # killed in mid-write
    header, records = run_teacher(local, out, "--model", a, "--topk", "2", "--batch", "2")
    assert sorted(r["image"] for r in records) == sorted(train)
    assert header["header"] and sum(1 for line in out.read_text().splitlines() if '"header"' in line) == 1
    before = out.read_bytes()
    with monkeypatch.context() as m:  # a complete file: done before any feature is read
        m.setattr(teacher.features, "split_features", lambda *a, **k: pytest.fail("features read again"))
        run_teacher(local, out, "--model", a, "--topk", "2")
    assert out.read_bytes() == before
    _, whole = run_teacher(local, tmp_path / "whole.jsonl", "--model", a, "--topk", "2")
    by_image = {r["image"]: r for r in whole}  # (scores: the same up to float rounding in other batch sizes)
    for r in records:
        assert r.keys() == by_image[r["image"]].keys() and r.get("caption") == by_image[r["image"]].get("caption")
        assert r.get("score", 0) == pytest.approx(by_image[r["image"]].get("score", 0), abs=1e-4)


def test_another_header_is_refused_in_one_line(files, tmp_path, capsys):
    _, _, a, b, _ = files
    out = tmp_path / "t.jsonl"
    run_teacher(files, out, "--model", a, "--limit", "2")
    for other, said in [(["--model", a, "--set", "decode.length_penalty=1.0"],
                         "written with other settings (length_penalty: 0.0 there, 1.0 now)"),
                        (["--model", b], "written with other model files"),
                        (["--model", a, "--split", "val"], "written with split 'train', not 'val'")]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as stop:
            run_teacher(files, out, *other)
        err = capsys.readouterr().err.strip()
        assert stop.value.code == 2 and len(err.splitlines()) == 1 and err.startswith(f"error: {out}: {said}")
    out.write_text('{"image": "x"}\n')
    with pytest.raises(SystemExit):
        run_teacher(files, out, "--model", a)
    assert "its first line is no header" in capsys.readouterr().err
