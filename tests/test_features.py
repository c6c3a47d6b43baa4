"""Feature cache: extraction matches the encoder, resumes, refuses mismatches, survives bad images."""

import json

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
