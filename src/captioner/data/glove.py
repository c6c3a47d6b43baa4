"""Pretrained word vectors in GloVe's text format (``word v1 v2 ... vD`` per line) for the word embedding.

GloVe's files are a download; any local file in that format works
(fastText's .vec files too: their first line, ``COUNT DIM``, is skipped).
"""

import logging
from pathlib import Path

import torch

from captioner.data.vocab import Vocab
from captioner.errors import file_error

log = logging.getLogger("captioner")


def load_glove(path: str | Path, vocab: Vocab, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Vectors for the vocabulary's words: ([V, dim] float tensor, [V] bool: found in the file).

    Words are matched as the vocabulary stores them (lower case); a word missing from the file keeps a zero
    row and ``found`` False, for the caller to leave at its random initialisation.
    """
    path = Path(path)
    if not path.is_file():
        raise file_error(path, "no such word-vector file")
    vectors = torch.zeros(len(vocab), dim)
    found = torch.zeros(len(vocab), dtype=torch.bool)
    try:
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                parts = line.rstrip("\n").rstrip().split(" ")
                if number == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                    continue  # a fastText header
                if len(parts) < 2:
                    continue  # blank line
                if len(parts) != dim + 1:
                    raise file_error(path, f"line {number}: {len(parts) - 1} numbers, expected {dim} "
                                     f"(model.embed_dim must equal the vectors' size)")
                row = vocab.stoi.get(parts[0])
                if row is None:
                    continue
                try:
                    vectors[row] = torch.tensor([float(x) for x in parts[1:]])
                except ValueError:
                    raise file_error(path, f"line {number}: not a number in the vector of {parts[0]!r}") from None
                found[row] = True
    except UnicodeDecodeError as e:
        raise file_error(path, f"not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})") from None
    log.info("%s: vectors for %d of %d vocabulary words", path, int(found.sum()), len(vocab))
    return vectors, found


def init_embedding(embedding: torch.nn.Embedding, path: str | Path, vocab: Vocab, freeze: bool) -> int:
    """Copy the file's vectors into ``embedding`` (words it lacks keep their random start); returns how many.

    ``freeze``: the embedding is not trained further."""
    vectors, found = load_glove(path, vocab, embedding.embedding_dim)
    if not bool(found.any()):
        raise file_error(path, "none of the vocabulary's words are in this file")
    with torch.no_grad():
        embedding.weight[found] = vectors[found].to(embedding.weight)
    embedding.weight.requires_grad_(not freeze)
    return int(found.sum())
