"""Knowledge distillation (train.distill): a teacher's captions and top-k next-word probabilities as extra
training targets."""

import json

import pytest
import torch

from captioner.config import load_config
from captioner.data.synth import make_synth
from captioner.data.vocab import Vocab
from captioner.errors import CaptionerError
from captioner.training.data import CaptionBatches, with_teacher
from captioner.training.distill import read_teacher
from conftest import random_feats, small_decoder

TEACHER_WORDS = ["<pad>", "<start>", "<end>", "<unk>", "a", "red", "circle", "zebra"]


def _teacher_file(path, records, vocab=TEACHER_WORDS):
    lines = [{"header": True, "command": "python recipes/teacher_captions.py ...", "vocab": vocab}, *records]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_teacher_captions_are_read_in_the_students_words(tmp_path):
    student = Vocab(["<pad>", "<start>", "<end>", "<unk>", "circle", "red", "a"])
    topk = {"ids": [[4, 7], [5, 4], [6, 2], [2, 6]], "probs": [[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]]}
    path = _teacher_file(tmp_path / "t.jsonl", [
        {"image": "x.png", "view": "flip", "caption": "a red circle", "tokens": [4, 5, 6], "score": -1.0,
         "topk": topk},
        {"image": "y.png", "error": "y.png: cannot read"},
        {"image": "elsewhere.png", "caption": "a circle", "tokens": [4, 6], "score": -2.0, "topk": topk},
    ])
    teacher = read_teacher(path, {"x.png": 7}, student, max_len=50, topk=True)
    assert teacher.rows.tolist() == [7]
    assert teacher.captions.tolist() == [student.encode(["a", "red", "circle"])]
    assert teacher.topk_ids.shape == (1, 4, 2)
    # teacher ids 4 7 | 5 4 | 6 2 | 2 6 are student a - | red a | circle <end> | <end> circle; "zebra" is not a
    # word of the student's: its probability is dropped
    assert teacher.topk_ids[0, 0, 0] == student.stoi["a"] and teacher.topk_probs[0, 0].tolist() == [
        pytest.approx(0.9), 0.0]
    assert teacher.topk_ids[0, 2].tolist() == [student.stoi["circle"], student.end_id]


def test_bad_teacher_files_are_one_line_errors(tmp_path):
    student = Vocab(TEACHER_WORDS)
    no_vocab = _teacher_file(tmp_path / "a.jsonl", [{"image": "x.png", "caption": "a"}], vocab=None)
    with pytest.raises(CaptionerError, match="a.jsonl: holds no vocabulary"):
        read_teacher(no_vocab, {"x.png": 0}, student, 50, topk=True)
    broken = tmp_path / "b.jsonl"
    broken.write_text('{"header": true}\nnot json\n{"image": "x.png", "caption": "a"}\n')
    with pytest.raises(CaptionerError, match="b.jsonl: line 2 is not JSON"):
        read_teacher(broken, {"x.png": 0}, student, 50)
    none_here = _teacher_file(tmp_path / "c.jsonl", [{"image": "other.png", "caption": "a"}])
    with pytest.raises(CaptionerError, match="no teacher caption of any training image"):
        read_teacher(none_here, {"x.png": 0}, student, 50)
    killed = _teacher_file(tmp_path / "d.jsonl", [{"image": "x.png", "caption": "a red"}])
    killed.write_text(killed.read_text() + '{"image": "y.png", "capt')  # cut off mid-write: skipped
    assert len(read_teacher(killed, {"x.png": 0, "y.png": 1}, student, 50).captions) == 1


def test_weights_of_one_and_no_soft_targets_give_the_plain_loss():
    decoder = small_decoder("soft").eval()
    feats, captions = random_feats(4), torch.randint(4, 20, (4, 6))
    captions[:, 0], captions[:, -1] = 1, 2
    plain = decoder.loss(feats, captions)
    weighted = decoder.loss(feats, captions, weights=torch.ones(4))
    torch.testing.assert_close(weighted["loss"], plain["loss"])
    half = decoder.loss(feats, captions, weights=torch.tensor([1.0, 1.0, 0.0, 0.0]))
    first_two = decoder.loss({k: v[:2] for k, v in feats.items()}, captions[:2])
    torch.testing.assert_close(half["weighted_nll"], first_two["nll"])  # (attention's own terms stay unweighted)


def test_the_topk_term_is_the_cross_entropy_against_the_teachers_probabilities():
    decoder = small_decoder("nic").eval()
    feats, captions = random_feats(2), torch.tensor([[1, 5, 6, 2], [1, 7, 2, 0]])
    ids = torch.randint(3, 20, (2, 3, 4))
    probs = torch.rand(2, 3, 4) / 4
    probs[1, 2] = 0  # past the second caption's <end>
    terms = decoder.loss(feats, captions, soft=(ids, probs), soft_weight=0.5)
    logq = torch.log_softmax(decoder.teacher_forcing(feats, captions)["logits"].float(), -1)  # [2, 3, V]
    expected = sum(-(probs[b, t] * logq[b, t, ids[b, t]]).sum() for b, t in [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)])
    torch.testing.assert_close(terms["distill_topk"], 0.5 * expected / 5)
    torch.testing.assert_close(terms["loss"], terms["nll"] + terms["distill_topk"])


def test_batches_carry_the_teachers_captions_weights_and_targets(tmp_path):
    student = Vocab(TEACHER_WORDS)
    topk = {"ids": [[4, 5]] * 3, "probs": [[0.5, 0.5]] * 3}
    path = _teacher_file(tmp_path / "t.jsonl", [{"image": "x.png", "caption": "a red", "topk": topk}])
    teacher = read_teacher(path, {"x.png": 1}, student, 50, topk=True)
    human = torch.tensor([[1, 4, 6, 5, 2], [1, 6, 2, 0, 0]])
    captions, rows, weights, soft = with_teacher(human, torch.tensor([0, 1]), teacher, 0.5)
    assert captions.shape == (3, 5) and rows.tolist() == [0, 1, 1] and weights.tolist() == [1, 1, 0.5]
    data = CaptionBatches({"global": torch.arange(2.0)[:, None]}, captions, rows, weights=weights, soft=soft)
    batch = data[[2, 0]]
    assert batch["weights"].tolist() == [0.5, 1.0] and batch["captions"].shape == (2, 5)
    assert batch["topk_probs"].shape == (2, 4, 2) and batch["topk_probs"][0, :3].sum() == 3
    assert batch["topk_probs"][1].sum() == 0  # a human caption: no soft targets


@pytest.mark.slow
def test_training_with_a_teacher_file(tmp_path):
    """A run with distillation trains and differs from one without; the teacher here is a stand-in (each
    image's first reference, with made-up top-k lists): what is checked is the plumbing, not a score."""
    from captioner.training.train import train

    data = make_synth(tmp_path / "synth", n_train=40, n_val=6, n_test=2, size=32)
    lines = (data / "captions.txt").read_text().splitlines()
    train_names = set((data / "splits" / "train.txt").read_text().split())
    first = {}
    for line in lines:
        image, caption = line.split("\t")
        if image in train_names:
            first.setdefault(image, caption)
    vocab = ["<pad>", "<start>", "<end>", "<unk>", "a", "red", "blue", "circle", "square", "above"]
    records = [{"image": image, "caption": caption.lower().rstrip(" ."),
                "topk": {"ids": [[4, 5, 7]] * 12, "probs": [[0.5, 0.3, 0.2]] * 12}} for image, caption in first.items()]
    teacher = _teacher_file(tmp_path / "teacher.jsonl", records, vocab)
    quick = ["train.max_epochs=1", "train.batch_size=16", "model.hidden_dim=16", "model.embed_dim=16",
             "model.attention_dim=8"]
    plain = train(load_config("synth_soft", quick), data, tmp_path / "plain", tmp_path / "cache", progress=False)
    taught = train(load_config("synth_soft", [*quick, f"train.distill={teacher}", "train.distill_weight=0.5",
                                              "train.distill_topk=0.3"]), data, tmp_path / "taught",
                   tmp_path / "cache", progress=False)
    a, b = (torch.load(p, weights_only=True)["state_dict"] for p in (plain, taught))
    assert any(not torch.equal(a[k], b[k]) for k in a)
    logged = (tmp_path / "taught" / "logs" / "metrics.csv").read_text()
    assert "train/distill_topk" in logged and "train/weighted_nll" in logged
