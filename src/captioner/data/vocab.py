"""Word vocabulary: token <-> id, with the four special tokens at fixed ids."""

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from captioner.errors import CaptionerError, file_error
from captioner.io import write_json_atomic

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)  # ids 0, 1, 2, 3
FORMAT = "captioner-vocab/1"


class Vocab:
    """Maps words to ids.  ``itos[i]`` is the word with id ``i``; the specials come first."""

    def __init__(self, itos: Sequence[str], min_freq: int = 1):
        itos = list(itos)
        if tuple(itos[: len(SPECIALS)]) != SPECIALS:
            raise CaptionerError(f"vocabulary must start with {', '.join(SPECIALS)}")
        if len(set(itos)) != len(itos):
            raise CaptionerError("vocabulary has duplicate words")
        self.itos: list[str] = itos
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(itos)}
        self.min_freq = min_freq
        self.pad_id, self.start_id, self.end_id, self.unk_id = range(len(SPECIALS))

    @classmethod
    def build(cls, token_lists: Iterable[list[str]], min_freq: int = 1, max_size: int | None = None) -> "Vocab":
        """Words seen at least ``min_freq`` times, most frequent first (ties alphabetical).

        ``max_size`` caps the total size, specials included.
        """
        counts = Counter(tok for tokens in token_lists for tok in tokens)
        words = sorted((w for w, n in counts.items() if n >= min_freq and w not in SPECIALS),
                       key=lambda w: (-counts[w], w))
        if max_size is not None:
            words = words[: max(0, max_size - len(SPECIALS))]
        return cls([*SPECIALS, *words], min_freq=min_freq)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, word: str) -> bool:
        return word in self.stoi

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.itos == other.itos

    def __repr__(self) -> str:
        return f"Vocab({len(self)} words, min_freq={self.min_freq})"

    def encode(self, tokens: Iterable[str], add_special: bool = True) -> list[int]:
        """Token ids; unknown words -> ``unk_id``; with ``add_special`` wrapped in start ... end."""
        ids = [self.stoi.get(tok, self.unk_id) for tok in tokens]
        return [self.start_id, *ids, self.end_id] if add_special else ids

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Words up to the first ``<end>``, skipping ``<start>`` and ``<pad>``."""
        words = []
        for i in ids:
            i = int(i)
            if i == self.end_id:
                break
            if i not in (self.start_id, self.pad_id):
                words.append(self.itos[i] if 0 <= i < len(self.itos) else UNK)
        return words

    # -- persistence -----------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {"format": FORMAT, "itos": list(self.itos), "min_freq": self.min_freq}

    @classmethod
    def from_dict(cls, d: dict) -> "Vocab":
        if not isinstance(d, dict) or d.get("format") != FORMAT or not isinstance(d.get("itos"), list):
            raise CaptionerError(f"not a vocabulary (expected format {FORMAT!r} with an 'itos' list)")
        return cls(d["itos"], min_freq=int(d.get("min_freq", 1)))

    def save(self, path: str | Path) -> Path:
        return write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "Vocab":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise file_error(path, "no such file") from None
        except UnicodeDecodeError as e:
            raise file_error(path, f"not UTF-8 text (byte {e.start})") from None
        except json.JSONDecodeError as e:
            raise file_error(path, f"malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
        except OSError as e:
            raise file_error(path, f"cannot read ({e.strerror or e})") from None
        try:
            return cls.from_dict(data)
        except CaptionerError as e:
            raise file_error(path, str(e)) from None
