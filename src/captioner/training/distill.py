"""Knowledge distillation from a teacher's captions (``train.distill``): the JSONL file that
``recipes/teacher_captions.py`` writes, read into extra training targets.

Sequence level (Kim & Rush 2016): each training image's teacher caption is one more target caption, weighted
``train.distill_weight`` against a human one. Word level (``train.distill_topk``): along its caption the teacher
stored its top-k next-word probabilities, which become soft targets for the same positions.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from captioner.data.vocab import Vocab
from captioner.errors import file_error


@dataclass
class TeacherCaptions:
    """The teacher's captions of some training images, in the student's word ids.

    ``captions`` [N, T] padded ids (<start> w1 .. wn <end>), ``rows`` [N] their images' feature rows;
    ``topk_ids`` / ``topk_probs`` [N, T-1, K]: for the word at each position after <start> (and <end>), the
    teacher's K most likely words and their probabilities (zeros past the caption, or where not stored).
    """

    captions: Tensor
    rows: Tensor
    topk_ids: Tensor | None = None
    topk_probs: Tensor | None = None


def read_teacher(path: str | Path, row_of: dict[str, int], vocab: Vocab, max_len: int,
                 topk: bool = False) -> TeacherCaptions:
    """The teacher captions in ``path`` of the images in ``row_of`` (image name -> feature row), encoded with
    the student's ``vocab`` (words it lacks become <unk>; top-k entries it lacks are left out) and cut to
    ``max_len`` words. ``topk``: also read the stored next-word probabilities (an error if there are none)."""
    path = Path(path)
    header, records = _read_lines(path)
    teacher_words = header.get("vocab")
    if topk and not teacher_words:
        raise file_error(path, "holds no vocabulary in its header, so its top-k word ids cannot be read")
    to_student = None
    if teacher_words:  # teacher id -> student id (-1: a word the student does not have)
        to_student = torch.tensor([vocab.stoi.get(w, -1) for w in teacher_words], dtype=torch.long)
    ids, rows, soft = [], [], []
    for n, rec in records:
        if "error" in rec or rec.get("image") not in row_of:
            continue  # an image the teacher could not read, or one not among the training rows
        words = rec["caption"].split()[:max_len]
        ids.append(vocab.encode(words))
        rows.append(row_of[rec["image"]])
        if topk:
            if "topk" not in rec:
                raise file_error(path, f"line {n}: no top-k probabilities (write the file with --topk)")
            soft.append(_soft_targets(rec["topk"], to_student, len(words) + 1))
    if not ids:
        raise file_error(path, "no teacher caption of any training image of this dataset")
    captions = torch.full((len(ids), max(len(x) for x in ids)), vocab.pad_id, dtype=torch.long)  # [N, T]
    for i, x in enumerate(ids):
        captions[i, : len(x)] = torch.tensor(x)
    out = TeacherCaptions(captions, torch.tensor(rows, dtype=torch.long))
    if topk:
        positions, k = captions.size(1) - 1, max(s[0].size(1) for s in soft)
        out.topk_ids = torch.zeros(len(ids), positions, k, dtype=torch.long)  # [N, T-1, K]
        out.topk_probs = torch.zeros(len(ids), positions, k)  # [N, T-1, K]
        for i, (sid, sprob) in enumerate(soft):
            out.topk_ids[i, : sid.size(0), : sid.size(1)] = sid
            out.topk_probs[i, : sprob.size(0), : sprob.size(1)] = sprob
    return out


def _soft_targets(topk: dict, to_student: Tensor, positions: int) -> tuple[Tensor, Tensor]:
    """One caption's top-k lists as student ids and probabilities, [positions, K] each (words the student lacks
    get probability 0)."""
    ids = torch.tensor(topk["ids"][:positions], dtype=torch.long)  # [P, K] teacher ids
    probs = torch.tensor(topk["probs"][:positions], dtype=torch.float32)  # [P, K]
    mapped = to_student[ids]  # [P, K]
    probs = probs * (mapped >= 0)
    return mapped.clamp(min=0), probs


def _read_lines(path: Path) -> tuple[dict, list[tuple[int, dict]]]:
    """(header, [(line number, record)]) of a teacher captions file; a last line cut off by a kill is skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise file_error(path, f"cannot read ({e.strerror or e})") from None
    header, records = {}, []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines):  # a last line half-written
                break
            raise file_error(path, f"line {n} is not JSON") from None
        if obj.get("header") is True:
            header = obj
        elif isinstance(obj, dict) and ("caption" in obj or "error" in obj):
            records.append((n, obj))
        else:
            raise file_error(path, f"line {n} is not a teacher caption record")
    return header, records
