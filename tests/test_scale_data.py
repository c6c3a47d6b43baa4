"""Reading a dataset of COCO's size: Karpathy's dataset_coco.json with 123,287 images x 5 captions.

The JSON is generated (COCO-like sentences: capitals, full stops, commas, possessives, hyphens and a long
tail of rare words) with the Karpathy split's sizes, next to empty image files: the reader checks that every
image exists, and those checks are part of what a real run pays. The test then times ``load_dataset``,
builds the vocabulary (min_freq 5, as the configs) and checks the records.
"""

import gc
import json
import random
import re
import time
from collections import Counter
from pathlib import Path

import pytest

from captioner.data.readers import load_dataset
from captioner.data.tokenize import tokenize
from captioner.data.vocab import Vocab

pytestmark = pytest.mark.slow  # about half a minute: most of it writing the JSON and 123k files

SPLITS = {"train": 82_783, "restval": 30_504, "val": 5_000, "test": 5_000}  # Karpathy's COCO split
N_IMAGES = sum(SPLITS.values())  # 123,287
CAPTIONS_PER_IMAGE = 5
READ_SECONDS = 60  # generous bound on a busy 2-core machine (measured: about 15 s)
RECORDS_BYTES = 500e6  # the records' memory, as the process's private memory grows (measured: about 0.3 GB)

SUBJECTS = ["man", "woman", "person", "dog", "cat", "little girl", "young boy", "group of people", "train",
            "bus", "plate of food", "giraffe", "elephant", "skateboarder", "surfer", "pizza", "bird", "horse",
            "zebra", "kitchen", "baseball player", "bathroom", "living room", "motorcycle", "couple"]
VERBS = ["riding", "holding", "sitting on", "standing next to", "eating", "looking at", "walking down",
         "playing with", "laying on", "flying over", "parked near", "carrying", "is sitting in", "filled with"]
OBJECTS = ["a wave", "a surfboard", "a wooden bench", "a frisbee", "a table", "the street", "a kite",
           "a skateboard", "a bed", "the grass", "a field", "a cell phone", "a tennis racket", "an umbrella",
           "a sandwich", "a t-shirt", "2 dogs", "a man's hat", "a black-and-white photo", "some broccoli"]
PLACES = ["in a kitchen", "on top of a hill", "at the beach", "in the snow", "near the water",
          "on a city street", "in a park", "in front of a building", "", "", ""]
ADJECTIVES = ["large", "small", "white", "black", "red", "young", "old", "two", "three", "brown", "big", "little"]
ENDINGS = [".", ".", ".", " .", "", ". ", "!"]


def rare_words(n: int, rng: random.Random) -> list[str]:
    """``n`` made-up words: COCO's long tail of names, places and misspellings, most rarer than min_freq."""
    syllables = ["ba", "ro", "ki", "tu", "ne", "sa", "lo", "mi", "da", "pe", "chi", "gra", "ston", "ver", "al"]
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choices(syllables, k=rng.randint(2, 4))))
    return sorted(words)


def caption(rng: random.Random, tail: list[str]) -> str:
    """One COCO-like caption, e.g. "A young boy riding a wave at the beach." or "a dog, eating a kite"."""
    text = f"{rng.choice(['A', 'A', 'a', 'The', 'An'])} {rng.choice(ADJECTIVES)} {rng.choice(SUBJECTS)}"
    if rng.random() < 0.1:
        text += ","
    text += f" {rng.choice(VERBS)} {rng.choice(OBJECTS)}"
    if rng.random() < 0.6:
        text += " " + " ".join(rng.choices(tail, k=rng.randint(1, 2)))
    place = rng.choice(PLACES)
    return (f"{text} {place}" if place else text) + rng.choice(ENDINGS)


def write_karpathy_json(folder, seed: int = 0):
    """``folder/dataset_coco.json`` with COCO's split sizes, and an empty file for every image."""
    rng = random.Random(seed)
    tail = rare_words(20_000, rng)
    tail = rng.choices(tail, weights=[1 / (i + 1) for i in range(len(tail))], k=300_000)  # Zipf-like
    (folder / "train2014").mkdir()
    (folder / "val2014").mkdir()
    images, sentence_id = [], 0
    splits = [split for split, count in SPLITS.items() for _ in range(count)]
    for image_id, split in enumerate(splits):
        subfolder = "train2014" if split == "train" else "val2014"
        filename = f"COCO_{subfolder}_{image_id:012d}.jpg"
        (folder / subfolder / filename).touch()
        sentences = []
        for _ in range(CAPTIONS_PER_IMAGE):
            raw = caption(rng, tail)
            sentences.append({"tokens": re.findall(r"[a-z0-9]+", raw.lower()), "raw": raw, "imgid": image_id,
                              "sentid": sentence_id})
            sentence_id += 1
        images.append({"filepath": subfolder, "filename": filename, "imgid": image_id, "split": split,
                       "sentids": [s["sentid"] for s in sentences], "sentences": sentences, "cocoid": image_id})
    path = folder / "dataset_coco.json"
    path.write_text(json.dumps({"images": images, "dataset": "coco"}), encoding="utf-8")
    return path


def private_bytes() -> int:
    """This process's private resident memory (RssAnon), or 0 where /proc has no such line."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def test_coco_sized_karpathy_json_is_read_in_seconds(tmp_path):
    json_file = write_karpathy_json(tmp_path)

    gc.collect()
    before, start = private_bytes(), time.perf_counter()
    dataset = load_dataset(json_file)
    read_s = time.perf_counter() - start
    gc.collect()
    grown = private_bytes() - before
    start = time.perf_counter()
    train = [r for r in dataset.records if r.split in ("train", "restval")]
    vocab = Vocab.build((c for r in train for c in r.captions), min_freq=5)
    vocab_s = time.perf_counter() - start
    size_mb = json_file.stat().st_size / 1e6
    print(f"\n{json_file.name} ({size_mb:.0f} MB, {N_IMAGES} images): read in {read_s:.1f} s, "
          f"vocabulary of {len(vocab)} words built in {vocab_s:.1f} s; private memory +{grown / 1e9:.2f} GB")

    assert read_s < READ_SECONDS
    assert grown < RECORDS_BYTES  # a few hundred bytes a caption: interned tokens, the JSON not kept
    assert dataset.splits() == SPLITS
    assert all(len(r.captions) == len(r.captions_raw) == CAPTIONS_PER_IMAGE for r in dataset.records)
    assert all(r.image.is_absolute() for r in dataset.records[:10])
    for record in dataset.records[:200]:  # each caption was tokenised once, as tokenize() does it
        assert record.captions == [tokenize(c) for c in record.captions_raw]
    assert 1_000 < len(vocab) < 20_000 and vocab.itos[4] == "a"  # the long tail below min_freq is left out
    counts = Counter(token for r in train for tokens in r.captions for token in tokens)
    assert set(vocab.itos[4:]) == {word for word, n in counts.items() if n >= 5}
