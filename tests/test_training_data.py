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
