"""Feature cache: extraction matches the encoder, resumes, refuses mismatches, survives bad images."""

import json
import logging
import multiprocessing
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from captioner.data.images import load_image
from captioner.data.records import ImageRecord
from captioner.encoders import create_encoder
from captioner.errors import CaptionerError
from captioner.features import (
    FeatureCache,
    cache_bytes,
    cache_dir_for,
    default_cache_root,
    extract_features,
    get_or_extract,
)

N_IMAGES = 10


@pytest.fixture
def records(tmp_path):
    """Ten small PNGs of different sizes, each a coloured square on a random background."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    out = []
    for i in range(N_IMAGES):
        pixels = rng.integers(0, 256, size=(30 + 3 * i, 40, 3), dtype=np.uint8)
        pixels[5:20, 10:25] = rng.integers(0, 256, size=3, dtype=np.uint8)
        path = folder / f"img{i:02d}.png"
        Image.fromarray(pixels).save(path)
        out.append(ImageRecord(image=path, split="train", captions_raw=["a square"]))
    return out


@pytest.fixture
def encoder():
    return create_encoder("tiny", weights="none")


def direct(encoder, records) -> tuple[torch.Tensor, torch.Tensor]:
    """What the cache should hold: the frozen encoder run on each image."""
    images = torch.stack([encoder.preprocess(load_image(r.image)) for r in records])  # [N, 3, S, S]
    with torch.inference_mode():
        return encoder.eval()(images)


def count_batches(monkeypatch, encoder, stop_after: int | None = None) -> list[int]:
    """Record the batch sizes the encoder sees; raise KeyboardInterrupt after ``stop_after`` batches."""
    seen: list[int] = []
    real = type(encoder).forward.__get__(encoder)  # the real method, even under an earlier spy

    def spy(images):
        if stop_after is not None and len(seen) == stop_after:
            raise KeyboardInterrupt
        seen.append(images.shape[0])
        return real(images)

    monkeypatch.setattr(encoder, "forward", spy)
    return seen


# -- locations ---------------------------------------------------------------------------------------------


def test_cache_root_and_directory_names(monkeypatch, tmp_path, encoder):
    monkeypatch.setenv("CAPTIONER_CACHE", str(tmp_path / "c"))
    assert default_cache_root() == tmp_path / "c"
    monkeypatch.delenv("CAPTIONER_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_root() == tmp_path / ".cache" / "captioner"
    assert cache_dir_for("abc123", encoder, tmp_path) == tmp_path / "features" / "abc123-tiny-none-s64-g4"
    early = create_encoder("mobilenet_v2", weights="none", layer="features14")
    assert cache_dir_for("f", early, tmp_path).name == "f-mobilenet_v2.features14-none-s224-g14"


# -- extraction -----------------------------------------------------------------------------------------


def test_extracted_features_match_the_encoder(tmp_path, records, encoder):
    cache = extract_features(records, encoder, tmp_path / "cache", batch_size=4, progress=False,
                             fingerprint="fp1")
    global_, grid = direct(encoder, records)
    assert cache.names == [r.name for r in records] and len(cache) == N_IMAGES
    assert cache.grid.shape == (N_IMAGES, 16, 130) and cache.grid.dtype == np.float16
    assert cache.global_.shape == (N_IMAGES, 2080) and not cache.grid.flags.writeable
    loaded_global, loaded_grid = cache.load_all()
    assert loaded_global.dtype == torch.float32 and cache.load_all(torch.float16)[1].dtype == torch.float16
    torch.testing.assert_close(loaded_grid, grid, atol=2e-3, rtol=2e-3)  # float16 storage
    torch.testing.assert_close(loaded_global, global_, atol=2e-3, rtol=2e-3)
    assert cache.rows(["img03.png", "img00.png"]) == [3, 0] and cache.failed == {}
    some_global, some_grid = cache.load_rows([3, 0])  # only the rows asked for, in that order
    assert torch.equal(some_grid, loaded_grid[[3, 0]]) and torch.equal(some_global, loaded_global[[3, 0]])
    meta = json.loads((tmp_path / "cache" / "meta.json").read_text())
    assert meta["complete"] and meta["count"] == N_IMAGES and meta["dtype"] == "float16"
    assert meta["encoder"] == encoder.describe() and meta["fingerprint"] == "fp1"
    assert np.load(tmp_path / "cache" / "done.npy").all()


def test_worker_processes_give_the_same_features(tmp_path, records, encoder):
    alone = extract_features(records, encoder, tmp_path / "a", batch_size=4, progress=False)
    workers = extract_features(records, encoder, tmp_path / "b", batch_size=4, num_workers=2, progress=False)
    assert np.array_equal(alone.grid, workers.grid) and np.array_equal(alone.global_, workers.global_)


def test_progress_bar_runs(tmp_path, records, encoder):
    cache = extract_features(records[:3], encoder, tmp_path / "cache", progress=True)
    assert len(cache) == 3


def test_interrupted_extraction_resumes_with_only_the_missing_rows(tmp_path, records, encoder, monkeypatch):
    out = tmp_path / "cache"
    seen = count_batches(monkeypatch, encoder, stop_after=1)
    with pytest.raises(KeyboardInterrupt):
        extract_features(records, encoder, out, batch_size=4, progress=False)
    assert seen == [4] and np.load(out / "done.npy").sum() == 4
    with pytest.raises(CaptionerError, match="did not finish; re-run `captioner features`"):
        FeatureCache.open(out)

    seen = count_batches(monkeypatch, encoder)
    cache = extract_features(records, encoder, out, batch_size=4, progress=False)
    assert seen == [4, 2]  # the 6 missing images only
    torch.testing.assert_close(cache.load_all()[1], direct(encoder, records)[1], atol=2e-3, rtol=2e-3)


def test_get_or_extract_reuses_a_complete_cache(tmp_path, records, encoder, monkeypatch):
    first = get_or_extract(records, encoder, tmp_path, fingerprint="fp", progress=False)
    assert first.directory == tmp_path / "features" / "fp-tiny-none-s64-g4"
    seen = count_batches(monkeypatch, encoder)
    again = get_or_extract(records, encoder, tmp_path, fingerprint="fp", progress=False)
    assert seen == [] and again.names == first.names


# -- refusals -------------------------------------------------------------------------------------------------


def test_a_cache_of_other_settings_is_refused_with_a_clear_message(tmp_path, records, encoder):
    out = tmp_path / "cache"
    extract_features(records, encoder, out, progress=False, fingerprint="fp")
    coarse = create_encoder("tiny", weights="none", grid_size=2)
    with pytest.raises(CaptionerError, match=r"made with tiny \(none\) s64 g4, but the config asks for "
                                             r"tiny \(none\) s64 g2 .*use another --cache or re-extract"):
        FeatureCache.open(out, expect=coarse.describe())
    with pytest.raises(CaptionerError, match="for dataset fp, but the config asks for .* for dataset other"):
        get_or_extract(records, encoder, fingerprint="other", out_dir=out, progress=False)
    with pytest.raises(CaptionerError, match="holds features of tiny .* overwrite=True"):
        extract_features(records, coarse, out, progress=False)
    replaced = extract_features(records, coarse, out, progress=False, overwrite=True)
    assert replaced.grid.shape == (N_IMAGES, 4, 130)
    assert FeatureCache.open(out, expect=coarse.describe()).meta["complete"]


def test_missing_cache_and_clashing_image_names_are_errors(tmp_path, records, encoder):
    with pytest.raises(CaptionerError, match="no feature cache here"):
        FeatureCache.open(tmp_path / "nothing")
    (tmp_path / "other").mkdir()
    clash = ImageRecord(image=tmp_path / "other" / records[0].name, split="val")
    with pytest.raises(CaptionerError, match="two images share the name 'img00.png'"):
        extract_features([*records, clash], encoder, tmp_path / "cache", progress=False)


def test_bad_images_are_recorded_and_the_rest_extracted(tmp_path, records, encoder, capsys):
    bad = records[0].image.parent / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n not really")
    records.insert(3, ImageRecord(image=bad, split="train"))
    cache = extract_features(records, encoder, tmp_path / "cache", batch_size=4, progress=False)
    assert list(cache.failed) == ["broken.png"] and "broken.png" in cache.failed["broken.png"]
    assert "1 image(s) could not be read" in capsys.readouterr().err
    done = np.load(tmp_path / "cache" / "done.npy")
    assert not done[3] and done.sum() == N_IMAGES and not cache.grid[3].any()
    good = [r for r in records if r.image != bad]
    torch.testing.assert_close(cache.load_all()[1][cache.rows([r.name for r in good])],
                               direct(encoder, good)[1], atol=2e-3, rtol=2e-3)
    with pytest.raises(CaptionerError, match="failed to load"):
        cache.rows(["broken.png"])


# -- disk space ----------------------------------------------------------------------------------------------


def free_disk(monkeypatch, free: int) -> None:
    """Make the disk look as if it had ``free`` bytes free."""
    usage = SimpleNamespace(total=10**12, used=10**12 - free, free=free)
    monkeypatch.setattr("captioner.features.shutil.disk_usage", lambda path: usage)


def test_extraction_says_its_size_and_refuses_a_short_disk_before_writing(tmp_path, records, encoder, monkeypatch,
                                                                        caplog):
    out = tmp_path / "new" / "cache"
    need = cache_bytes(N_IMAGES, encoder)
    assert need == N_IMAGES * ((16 * 130 + 2080) * 2 + 1)  # float16 grid and global, a done flag
    free_disk(monkeypatch, need // 2)
    with pytest.raises(CaptionerError) as err:
        extract_features(records, encoder, out, progress=False)
    assert str(err.value) == f"{out}: needs 83.2 kB for the feature cache, 41.6 kB free"
    assert not (tmp_path / "new").exists()  # nothing written

    free_disk(monkeypatch, need)
    with caplog.at_level(logging.INFO, logger="captioner"):
        extract_features(records, encoder, out, progress=False)
    assert f"features of 10 images: 83.2 kB in {out}" in caplog.text

    free_disk(monkeypatch, 0)  # the arrays already there count as free: resuming or re-running needs no more
    assert extract_features(records, encoder, out, progress=False).meta["complete"]


def test_the_arrays_are_allocated_up_front_and_a_full_disk_is_one_line(tmp_path, records, encoder, monkeypatch):
    """The cache's blocks are allocated before any row is written (no sparse holes for a filling disk to fault
    on); a disk that is full by then is a one-line error naming the array."""
    import errno
    import os

    from captioner.features import _Arrays

    out = tmp_path / "cache"
    out.mkdir()
    _Arrays.open_or_create(out, 1000, encoder, fresh=True)  # made, nothing written yet
    for name in ("grid.npy", "global.npy", "done.npy"):
        stat = (out / name).stat()
        assert stat.st_blocks * 512 >= stat.st_size  # no holes

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
    with pytest.raises(CaptionerError, match=r"grid\.npy: the disk is full \(.* of features could not be allocated\)"):
        extract_features(records, encoder, tmp_path / "other", progress=False)


def _extract_in_two_processes(rank: int, init_file: str, records, out: str, full_disk: bool, results) -> None:
    """One of two processes extracting together (gloo); ``full_disk``: the disk looks full (process 0 alone
    checks it)."""
    import torch.distributed as dist

    import captioner.features

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    if full_disk:
        captioner.features.shutil.disk_usage = lambda path: SimpleNamespace(total=1, used=1, free=0)
    try:
        cache = extract_features(records, create_encoder("tiny", weights="none"), out, batch_size=2,
                                 progress=False)
        results.put((rank, f"extracted {len(cache)}"))
    except CaptionerError as e:
        results.put((rank, str(e)))
    finally:
        dist.destroy_process_group()


def in_two_processes(tmp_path, records, out: Path, full_disk: bool) -> dict[int, str]:
    """What each of two extracting processes said; none may hang."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    init = tmp_path / f"init-{out.name}"
    processes = [context.Process(target=_extract_in_two_processes,
                                 args=(rank, str(init), records, str(out), full_disk, results)) for rank in (0, 1)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    hung = [p for p in processes if p.is_alive()]
    for process in hung:
        process.kill()
    assert not hung
    return dict(results.get(timeout=5) for _ in processes)


def test_two_processes_share_the_extraction_and_a_refusal_stops_both(tmp_path, records, encoder):
    said = in_two_processes(tmp_path, records, tmp_path / "shared", full_disk=False)
    assert said == {0: "extracted 10", 1: "extracted 10"}
    alone = extract_features(records, encoder, tmp_path / "alone", progress=False)
    shared = np.load(tmp_path / "shared" / "grid.npy").astype(np.float32)  # other batches: rounding differs
    np.testing.assert_allclose(shared, alone.grid.astype(np.float32), atol=2e-3, rtol=2e-3)
    assert np.load(tmp_path / "shared" / "done.npy").all()

    said = in_two_processes(tmp_path, records, tmp_path / "full", full_disk=True)
    assert said[0] == said[1] and "for the feature cache, 0.0 kB free" in said[0]  # not a hang in process 1


# -- damaged caches --------------------------------------------------------------------------------------------


def cut(name: str, keep) -> callable:
    """Damage: keep only the first ``keep(size)`` bytes of the file."""
    def damage(folder: Path) -> None:
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: keep(len(data))])
    return damage


def overwrite(name: str, at: int, data: bytes) -> callable:
    def damage(folder: Path) -> None:
        with (folder / name).open("r+b") as f:
            f.seek(at)
            f.write(data)
    return damage


def edit_meta(change) -> callable:
    def damage(folder: Path) -> None:
        meta = json.loads((folder / "meta.json").read_text())
        (folder / "meta.json").write_text(json.dumps(change(meta)))
    return damage


def save(name: str, array: np.ndarray) -> callable:
    return lambda folder: np.save(folder / name, array)


DAMAGES = {  # what is done to a good cache, the file the error must name, words it must say
    "grid cut in half": (cut("grid.npy", lambda n: n // 2), "grid.npy", "truncated"),
    "global cut after its header": (cut("global.npy", lambda n: 200), "global.npy", "truncated"),
    "empty grid": (cut("grid.npy", lambda n: 0), "grid.npy", "not a .npy array"),
    "grid header garbled": (overwrite("grid.npy", 12, b"{'descr': <f2, 'shape': ((("), "grid.npy", "corrupt header"),
    "global not an array": (overwrite("global.npy", 0, b"PK\x03\x04 zip?"), "global.npy", "not a .npy array"),
    "grid missing": (lambda folder: (folder / "grid.npy").unlink(), "grid.npy", "missing"),
    "grid of other rows": (save("grid.npy", np.zeros((9, 16, 130), np.float16)), "grid.npy", "meta.json says"),
    "global as float32": (save("global.npy", np.zeros((10, 2080), np.float32)), "global.npy", "holds float32"),
    "meta not JSON": (lambda folder: (folder / "meta.json").write_text("{names: ["), "meta.json", "unreadable"),
    "meta a list": (edit_meta(lambda m: [m]), "meta.json", "a JSON list, not an object"),
    "meta without names": (edit_meta(lambda m: {k: v for k, v in m.items() if k != "names"}), "meta.json",
                           "no 'names' list"),
    "meta without a grid size": (edit_meta(lambda m: {**m, "encoder": {"name": "tiny"}}), "meta.json",
                                 "the encoder has no grid_size, grid_dim, global_dim"),
    "meta with fewer names": (edit_meta(lambda m: {**m, "names": m["names"][:-1]}), "grid.npy", "meta.json says"),
}


@pytest.fixture
def good_cache(tmp_path_factory, records, encoder) -> Path:
    out = tmp_path_factory.mktemp("good") / "cache"
    extract_features(records, encoder, out, progress=False)
    return out


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_cache_is_a_one_line_error_naming_the_file(tmp_path, good_cache, damage):
    harm, file, words = DAMAGES[damage]
    folder = tmp_path / "damaged"
    shutil.copytree(good_cache, folder)
    harm(folder)
    with pytest.raises(CaptionerError) as err:
        FeatureCache.open(folder)
    message = str(err.value)
    assert message.startswith(f"{folder / file}: ") and words in message and "\n" not in message, message


@pytest.mark.parametrize("damage", ["grid cut in half", "empty grid", "meta without names"])
def test_extraction_over_a_damaged_cache_makes_it_anew(tmp_path, good_cache, records, encoder, damage):
    harm, file, words = DAMAGES[damage]
    folder = tmp_path / "damaged"
    shutil.copytree(good_cache, folder)
    harm(folder)
    if file == "meta.json":  # whose cache it was is unknown: replaced only when asked to
        with pytest.raises(CaptionerError, match="not a feature cache's metadata"):
            extract_features(records, encoder, folder, progress=False)
    cache = extract_features(records, encoder, folder, progress=False, overwrite=file == "meta.json")
    assert np.array_equal(cache.grid, FeatureCache.open(good_cache).grid)


# -- features beyond float16 ------------------------------------------------------------------------------------


def test_features_that_overflow_float16_stop_the_extraction(tmp_path, records, encoder):
    with torch.no_grad():  # outputs ~10^6 times larger: beyond float16's 65504
        for conv in (m for m in encoder.modules() if isinstance(m, torch.nn.Conv2d)):
            conv.weight.mul_(100)
    out = tmp_path / "cache"
    with pytest.raises(CaptionerError) as err:
        extract_features(records, encoder, out, batch_size=4, progress=False)
    assert str(err.value).startswith(f"{out}: features of img00.png overflow float16 (inf/nan) with encoder "
                                     "tiny (none) s64 g4: the encoder's outputs are too large")
    assert not np.load(out / "done.npy").any()  # nothing of it stored
    assert not json.loads((out / "meta.json").read_text())["complete"]
