"""One record type for every dataset format: an image, its split and its captions."""

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(slots=True)  # no per-record __dict__: COCO has 123k of them
class ImageRecord:
    image: Path  # absolute path of the image file
    split: str  # "train" | "val" | "test" | "restval" | "" (in no split)
    captions_raw: list[str] = field(default_factory=list)  # as written by the annotators
    captions: list[list[str]] = field(default_factory=list)  # tokenised (see data.tokenize)

    @property
    def name(self) -> str:
        return self.image.name


@dataclass
class CaptionDataset:
    """All images of a dataset with their captions; ``source`` is the file or folder it was read from."""

    source: Path
    records: list[ImageRecord]

    def split(self, name: str) -> list[ImageRecord]:
        return [r for r in self.records if r.split == name]

    def splits(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.records:
            counts[r.split] = counts.get(r.split, 0) + 1
        return counts
