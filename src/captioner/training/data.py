"""Batches for training and validation, from the feature cache: rows read per batch from its memory-mapped
files (:class:`~captioner.features.CacheRows`), or from tensors in memory.

Training iterates over (image, caption) pairs; validation over images (each decoded once and scored
against all its references). Batches are gathered with one index per batch, not per item.
"""

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from captioner.data.records import ImageRecord
from captioner.data.vocab import Vocab
from captioner.distributed import rank_and_world
from captioner.features import CacheRows, read_rows

Features = dict[str, Tensor | CacheRows]  # {"global": [N, D], "grid": [N, L, C]}, in memory or on disk


def encode_captions(records: list[ImageRecord], rows: list[int], vocab: Vocab,
                    max_len: int) -> tuple[Tensor, Tensor]:
    """All captions of ``records`` as padded ids [N, T] (<start> w1 .. wn <end>), with their feature rows [N]."""
    ids, owner = [], []
    for record, row in zip(records, rows, strict=True):
        for tokens in record.captions:
            if tokens:
                ids.append(vocab.encode(tokens[:max_len]))
                owner.append(row)
    width = max(len(x) for x in ids)
    captions = torch.full((len(ids), width), vocab.pad_id, dtype=torch.long)  # [N, T]
    for i, x in enumerate(ids):
        captions[i, : len(x)] = torch.tensor(x)
    return captions, torch.tensor(owner, dtype=torch.long)


class CaptionBatches(Dataset):
    """Item i of this dataset is a whole batch: the list of caption indices given by the batch sampler."""

    def __init__(self, features: Features, captions: Tensor, rows: Tensor,
                 mirrored: tuple[Features, Tensor] | None = None, weights: Tensor | None = None,
                 soft: tuple[Tensor, Tensor, Tensor] | None = None):
        """``mirrored`` (train.flip): the features of the mirrored images and, for each row of ``features``, the
        row of its mirror there (-1: none); each caption of a batch reads its mirror with probability 0.5.
        ``weights`` [N]: each caption's weight in the loss (distillation: a teacher caption's). ``soft``
        (word-level distillation): for each caption the row of its soft targets (-1: none) and those targets,
        ids and probabilities [M, P, K]."""
        self.features, self.captions, self.rows, self.mirrored = features, captions, rows, mirrored
        self.weights, self.soft = weights, soft

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: list[int]) -> dict:
        index_t = torch.as_tensor(index)
        caps = self.captions[index_t]  # [B, T_max]
        width = int((caps != 0).sum(1).max())
        rows = self.rows[index_t]
        feats = {k: read_rows(v, rows) for k, v in self.features.items()}  # [B, ...] float32
        if self.mirrored is not None:
            mirror_feats, mirror_of = self.mirrored
            mirror_rows = mirror_of[rows]  # [B]
            flip = (torch.rand(len(rows)) < 0.5) & (mirror_rows >= 0)  # [B] which captions read the mirror
            if flip.any():
                for k, v in feats.items():
                    v[flip] = read_rows(mirror_feats[k], mirror_rows[flip])
        batch = {"feats": feats, "captions": caps[:, :width]}
        if self.weights is not None:
            batch["weights"] = self.weights[index_t]  # [B]
        if self.soft is not None:
            batch["topk_ids"], batch["topk_probs"] = self._soft_targets(index_t, width - 1)
        return batch

    def _soft_targets(self, index: Tensor, positions: int) -> tuple[Tensor, Tensor]:
        """The batch's soft targets, [B, positions, K] ids and probabilities (zero for captions without)."""
        row_of, ids, probs = self.soft
        rows = row_of[index]  # [B]
        has = rows >= 0
        n = min(positions, ids.size(1))
        out_ids = torch.zeros(len(index), positions, ids.size(2), dtype=torch.long)
        out_probs = torch.zeros(len(index), positions, ids.size(2))
        out_ids[has, :n] = ids[rows[has], :n]
        out_probs[has, :n] = probs[rows[has], :n]
        return out_ids, out_probs


def with_teacher(captions: Tensor, rows: Tensor, teacher, weight: float) -> tuple[Tensor, Tensor, Tensor, tuple | None]:
    """The human captions and the teacher's (:class:`~captioner.training.distill.TeacherCaptions`) as one
    training set: (captions [N+M, T], rows [N+M], weights [N+M], soft targets for CaptionBatches or None)."""
    width = max(captions.size(1), teacher.captions.size(1))
    both = torch.zeros(len(captions) + len(teacher.captions), width, dtype=torch.long)  # <pad> is id 0
    both[: len(captions), : captions.size(1)] = captions
    both[len(captions) :, : teacher.captions.size(1)] = teacher.captions
    weights = torch.cat([torch.ones(len(captions)), torch.full((len(teacher.captions),), float(weight))])
    soft = None
    if teacher.topk_ids is not None:
        row_of = torch.cat([torch.full((len(captions),), -1, dtype=torch.long),
                            torch.arange(len(teacher.captions))])
        soft = (row_of, teacher.topk_ids, teacher.topk_probs)
    return both, torch.cat([rows, teacher.rows]), weights, soft


class ImageBatches(Dataset):
    """Validation/evaluation: item i is a batch of images (feature rows) with their keys."""

    def __init__(self, features: Features, rows: list[int], keys: list[str]):
        self.features, self.rows, self.keys = features, rows, keys

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: list[int]) -> dict:
        rows = torch.as_tensor([self.rows[i] for i in index])
        return {"feats": {k: read_rows(v, rows) for k, v in self.features.items()},
                "keys": [self.keys[i] for i in index]}


class ShuffledBatches(Sampler[list[int]]):
    """Shuffled batches whose order depends only on (seed, epoch): a resumed run sees the same batches.

    With ``lengths``, captions of similar length are batched together (within pools of 50 batches, then the
    batches are shuffled), so little time is spent on padding: the loop over words runs to the longest
    caption of the batch.
    """

    POOL = 50  # batches per length-sorting pool

    def __init__(self, n: int, batch_size: int, seed: int = 0, shuffle: bool = True,
                 lengths: Tensor | None = None):
        self.n, self.batch_size, self.seed, self.shuffle, self.epoch = n, batch_size, seed, shuffle, 0
        self.lengths = lengths

    def set_epoch(self, epoch: int) -> None:  # called by Lightning at the start of every epoch
        self.epoch = epoch

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __iter__(self):
        """This process's part of each batch: in a run of W processes (DDP) batch_size is the total over
        them, and process r takes every W-th item of each batch from the r-th on, so W processes go through
        the same batches, in the same order, as one process would. Training drops a last batch too small
        to give every process a part (all must take the same number of steps); evaluation keeps it."""
        rank, world = rank_and_world()
        for batch in self._batches():
            part = batch[rank::world]
            if part and (len(batch) >= world or not self.shuffle):
                yield part

    def _batches(self):
        if not self.shuffle:
            order = list(range(self.n))
            yield from (order[i : i + self.batch_size] for i in range(0, self.n, self.batch_size))
            return
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=gen)
        if self.lengths is None:
            batches = [order[i : i + self.batch_size].tolist() for i in range(0, self.n, self.batch_size)]
        else:
            batches = []
            pool = self.POOL * self.batch_size
            for i in range(0, self.n, pool):
                chunk = order[i : i + pool]
                chunk = chunk[torch.argsort(self.lengths[chunk], stable=True)]  # similar lengths together
                batches += [chunk[j : j + self.batch_size].tolist() for j in range(0, len(chunk), self.batch_size)]
            batches = [batches[j] for j in torch.randperm(len(batches), generator=gen).tolist()]
        yield from batches


def batch_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0, num_workers: int = 0,
                 bucket_by_length: bool = False, pin_memory: bool = False) -> DataLoader:
    lengths = (dataset.captions != 0).sum(1) if bucket_by_length else None  # [N] caption lengths
    sampler = ShuffledBatches(len(dataset), batch_size, seed, shuffle, lengths)
    # its own generator: starting an epoch's iterator then draws nothing from the global RNG, whose stream
    # (dropout, hard attention's samples) is reseeded per epoch so that resumed runs repeat it exactly.
    # Workers persist across epochs: fine-tuning decodes images in them, and restarting 15 of them every
    # epoch cost a GPU run 30 s of its first epoch and more at each validation.
    return DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=num_workers,
                      persistent_workers=num_workers > 0, collate_fn=_identity, pin_memory=pin_memory,
                      generator=torch.Generator().manual_seed(seed))


def _identity(batch):
    return batch


class ImageCaptionBatches(Dataset):
    """Encoder fine-tuning: like :class:`CaptionBatches`, but yields preprocessed images, not cached features."""

    def __init__(self, paths: list, preprocess, captions: Tensor, rows: Tensor):
        self.paths, self.preprocess, self.captions, self.rows = paths, preprocess, captions, rows

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: list[int]) -> dict:
        index_t = torch.as_tensor(index)
        caps = self.captions[index_t]
        width = int((caps != 0).sum(1).max())
        images = load_images([self.paths[int(r)] for r in self.rows[index_t]], self.preprocess)
        return {"images": images, "captions": caps[:, :width]}


class ImageFileBatches(Dataset):
    """Validation while fine-tuning: batches of preprocessed images with their keys."""

    def __init__(self, paths: list, preprocess, keys: list[str]):
        self.paths, self.preprocess, self.keys = paths, preprocess, keys

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: list[int]) -> dict:
        return {"images": load_images([self.paths[i] for i in index], self.preprocess),
                "keys": [self.keys[i] for i in index]}


def load_images(paths: list, preprocess) -> Tensor:
    """Read and preprocess image files into one batch [B, 3, S, S]."""
    from captioner.data.images import load_image

    return torch.stack([preprocess(load_image(p)) for p in paths])
