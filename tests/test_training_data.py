"""Training batches: every caption once per epoch, reproducible order, little padding."""

import torch

from captioner.training.data import ShuffledBatches


def _epoch(sampler, epoch):
    sampler.set_epoch(epoch)
    return list(sampler)


def test_every_caption_once_and_reproducible():
    lengths = torch.randint(5, 30, (1000,))
    for lens in (None, lengths):
        sampler = ShuffledBatches(1000, 32, seed=3, lengths=lens)
        batches = _epoch(sampler, 0)
        assert sorted(i for b in batches for i in b) == list(range(1000))
        assert len(batches) == len(sampler) == 32
        assert _epoch(ShuffledBatches(1000, 32, seed=3, lengths=lens), 0) == batches  # same (seed, epoch)
        assert _epoch(sampler, 1) != batches  # a new epoch reshuffles


def test_length_bucketing_cuts_padding():
    lengths = torch.randint(5, 30, (3200,), generator=torch.Generator().manual_seed(0))

    def padded_words(lens):
        return sum(int(lengths[b].max()) * len(b) for b in _epoch(ShuffledBatches(3200, 32, lengths=lens), 0))

    assert padded_words(lengths) < 0.8 * padded_words(None)
    assert padded_words(lengths) < 1.1 * int(lengths.sum())


def test_streamed_rows_read_what_the_cache_holds(tmp_path):
    """CacheRows: rows read from the memory-mapped files equal the cache loaded into memory, in any order; a view
    of some rows reads nothing until asked; pickled (as for DataLoader workers), it opens the file again."""
    import pickle

    import numpy as np

    from captioner.features import CacheRows, read_rows

    grid = np.lib.format.open_memmap(tmp_path / "grid.npy", mode="w+", dtype=np.float16, shape=(6, 4, 3))
    grid[:] = np.arange(72, dtype=np.float16).reshape(6, 4, 3)
    grid.flush()
    rows = CacheRows(np.load(tmp_path / "grid.npy", mmap_mode="r"), np.array([5, 1, 3]))
    assert rows.size() == (3, 4, 3) and rows.size(0) == len(rows) == 3
    assert torch.equal(rows[0:2], torch.from_numpy(np.asarray(grid[[5, 1]])))
    assert torch.equal(read_rows(rows, torch.tensor([2, 0])), torch.from_numpy(np.asarray(grid[[3, 5]])).float())
    some = rows.take([2])  # a view: the file's row 3
    assert torch.equal(some.float(), torch.from_numpy(np.asarray(grid[[3]])).float())
    again = pickle.loads(pickle.dumps(rows))
    assert len(pickle.dumps(rows)) < 1000 and torch.equal(again[:], rows[:])
