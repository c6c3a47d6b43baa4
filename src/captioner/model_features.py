"""A model's encoder features for the images of a dataset's split: from the feature cache, or computed by the
model's own encoder when it carries one (a fine-tuned encoder's features are in no cache); per encoder for an
ensemble across encoders, and per view with the test-time flip. Also the training split's global features
that consensus reranking looks up neighbours in."""

import logging
from pathlib import Path

import torch
from PIL import ImageOps

from captioner.captioning import encode_images, read_images, with_mirrored
from captioner.devices import module_device
from captioner.errors import CaptionerError
from captioner.features import CacheRows, load_features, load_mirrored_features, split_rows
from captioner.model import CaptionModel, EncoderGroup, encoder_key, model_encoder

log = logging.getLogger("captioner")


def split_features(model: CaptionModel, data: str | Path, split: str = "val", cache_root: str | Path | None = None,
                   limit: int | None = None, progress: bool = True,
                   encoder=None) -> tuple[list, dict[str, torch.Tensor], list[str]]:
    """The images of a split that the model can caption, their encoder features and the names of the images
    that failed: (records, {"global": [n, D], "grid": [n, L, C]}, failed). Cached features are
    :class:`~captioner.features.CacheRows`, read from disk as they are sliced (``feats["grid"][i:j]``).
    Features come from the cache, or
    from the model's own encoder when it carries one (fine-tuned: its features are in no cache). An ensemble
    across encoders gets every file's features, as {"0.grid": .., "1.grid": .., ...}; ``decode.flip`` adds
    those of the mirrored images (:func:`with_mirrored`; cached apart, in a folder ending ``-mirror``).
    ``encoder``: the model's encoder already built (e.g. run by ONNX Runtime), for a model that carries one."""
    plain = _split_features(model, data, split, cache_root, limit, progress, encoder=encoder)
    if not model.config.decode.flip:
        return plain
    chosen, (feats, mirrored), failed = _common_images(
        [plain, _split_features(model, data, split, cache_root, limit, progress, mirror=True, encoder=encoder)])
    return chosen, with_mirrored(model, feats, mirrored), failed


def _split_features(model: CaptionModel, data, split, cache_root, limit, progress, mirror: bool = False,
                    encoder=None):
    """:func:`split_features` of one view: the images, or (``mirror``) the images flipped left-right."""
    from captioner.data.readers import load_dataset

    if model.sources:
        return _group_features(model, data, split, cache_root, limit, progress, mirror, encoder)
    if model.encoder_state is not None:
        dataset = load_dataset(data)
        by_path = {r.image: r for r in dataset.records if r.split == split}
        paths = list(by_path)[:limit]
        images, errors = read_images(paths)
        chosen = [by_path[p] for p, img in zip(paths, images, strict=True) if img is not None]
        failed = sorted(Path(p).name for p, err in zip(paths, errors, strict=True) if err)
        kept = [(ImageOps.mirror(img) if mirror else img) for img in images if img is not None]
        feats = encode_images(encoder or model_encoder(model), kept) if chosen else {}
    else:
        device = str(module_device(model.decoder))
        dataset, records, _, cache = load_features(model.config, data, cache_root, progress, device=device)
        in_split = [r for r in records if r.split == split]
        if mirror and in_split:
            cache = load_mirrored_features(model.config, dataset, in_split, split, cache_root, progress, device)
        failed = sorted(cache.failed)
        chosen, rows = split_rows(records, cache, split, limit)
        feats = cache.streamed(rows)  # {"global": [n, D], "grid": [n, L, C]}, read from disk batch by batch
    if not chosen:
        raise CaptionerError(f"{data}: no usable images in split '{split}' (splits: {dataset.splits()})")
    return chosen, feats, failed


def _group_features(model: CaptionModel, data, split, cache_root, limit, progress, mirror: bool = False,
                    encoder=None):
    """:func:`split_features` for an ensemble across encoders: each file's, on the images all of them read."""
    own = encoder.encoders if isinstance(encoder, EncoderGroup) else [None] * len(model.sources)
    chosen, per_source, unread = _common_images([_split_features(source, data, split, cache_root, limit, progress,
                                                                 mirror, one) for source, one in zip(model.sources, own, strict=True)])
    return chosen, {f"{j}.{k}": v for j, f in enumerate(per_source) for k, v in f.items()}, unread


def _common_images(parts: list[tuple]) -> tuple[list, list[dict], list[str]]:
    """Several (records, features, failed) of one split, cut to the images every one of them read: (records,
    [features of each, rows in the order of those records], names of the images left out)."""
    common = set.intersection(*({r.name for r in chosen} for chosen, _, _ in parts))
    chosen = [r for r in parts[0][0] if r.name in common]
    aligned = []
    for records, f, _ in parts:
        rows = {r.name: i for i, r in enumerate(records)}
        index = torch.tensor([rows[r.name] for r in chosen])
        aligned.append({k: v.take(index) if isinstance(v, CacheRows) else v[index]  # [n, ...] in the order
                        for k, v in f.items()})  # of ``chosen``
    unread = {name for _, _, bad in parts for name in bad}  # by any of them: not scored
    unread |= {r.name for records, _, _ in parts for r in records} - common
    return chosen, aligned, sorted(unread)


def consensus_reranker(model: CaptionModel, data: str | Path | None = None, cache_root: str | Path | None = None,
                       progress: bool = True):
    """The consensus reranker of ``model`` (settings ``decode.consensus_k`` / ``consensus_weight``) over the
    training split of ``data`` (:func:`consensus_index`), or, with no ``data``, over the index the model file
    carries (``captioner export --consensus DATA``)."""
    from captioner.decoding.rerank import ConsensusReranker

    index = consensus_index(model, data, cache_root, progress) if data is not None else model.consensus_index
    if index is None:
        raise CaptionerError("consensus reranking needs the training captions of a dataset: "
                             "captioner.load(..., consensus=DATA), caption --consensus DATA, or a model file that "
                             "carries them (captioner export --consensus DATA)")
    d = model.config.decode
    return ConsensusReranker(index["features"], index["captions"], k=d.consensus_k, weight=d.consensus_weight,
                             key="0.global" if model.sources or d.flip else "global", mbr_weight=d.mbr_weight)


def consensus_index(model: CaptionModel, data: str | Path, cache_root: str | Path | None = None,
                    progress: bool = True) -> dict:
    """What consensus reranking compares an image with: the training split of ``data``, its images' global
    features (an ensemble across encoders: its first file's encoder's) and their captions, as
    {"features": [N, D], "captions": [N][captions][words], "source"}."""
    first = model.sources[0] if model.sources else model
    chosen, index = _training_globals(first, data, cache_root, progress)
    return {"features": index, "captions": [r.captions for r in chosen],
            "source": f"the training split of {Path(data).name} ({len(chosen)} images)"}


def _training_globals(model: CaptionModel, data: str | Path, cache_root: str | Path | None,
                      progress: bool) -> tuple[list, torch.Tensor]:
    """(records, [N, D] global features) of the training split. A model carrying its own (fine-tuned) encoder
    has no feature cache: its training images are encoded once, 256 at a time, and their global features kept
    in ``<cache>/consensus/<dataset>-<encoder>.pt``."""
    if model.encoder_state is None:
        chosen, feats, _ = _split_features(model, data, "train", cache_root, None, progress)  # the images alone
        return chosen, feats["global"].float()  # [N, D] in memory
    from captioner.data.readers import dataset_fingerprint, load_dataset
    from captioner.features import default_cache_root
    from captioner.io import torch_save_atomic

    dataset = load_dataset(data)
    records = [r for r in dataset.records if r.split == "train"]
    path = Path(cache_root or default_cache_root()) / "consensus" / \
        f"{dataset_fingerprint(dataset)}-{encoder_key(model)}.pt"
    if path.exists():  # (the dataset's fingerprint in its name: the same images, splits and file sizes)
        saved = torch.load(path, map_location="cpu")
        by_name = {r.name: r for r in records}
        return [by_name[name] for name in saved["names"]], saved["global"].float()
    log.info("encoding the %d training images once for consensus reranking (kept in %s)", len(records), path)
    encoder, chosen, parts = model_encoder(model), [], []
    for i in range(0, len(records), 256):
        chunk = records[i : i + 256]
        images, _ = read_images([r.image for r in chunk])
        kept = [(r, img) for r, img in zip(chunk, images, strict=True) if img is not None]
        if kept:
            parts.append(encode_images(encoder, [img for _, img in kept])["global"].cpu())  # [b, D]
            chosen += [r for r, _ in kept]
    if not chosen:
        raise CaptionerError(f"{data}: no readable training images for consensus reranking")
    index = torch.cat(parts).half()  # [N, D], stored and used in float16: the same neighbours every run
    torch_save_atomic(path, {"names": [r.name for r in chosen], "global": index})
    return chosen, index.float()
