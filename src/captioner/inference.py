"""Using a trained model: caption image files, decode cached features, score a split."""

import hashlib
import json
import logging
from pathlib import Path

import torch
from PIL import ImageOps

from captioner.checkpoint import CaptionModel, with_settings
from captioner.decoding import Hypothesis, beam_search, beam_search_nbest
from captioner.devices import module_device
from captioner.encoders import create_encoder
from captioner.errors import CaptionerError
from captioner.io import write_json_atomic
from captioner.metrics.coco import METRIC_NAMES, score_corpus

log = logging.getLogger("captioner")


class EncoderGroup:
    """The encoders of an ensemble across encoders, one per model file: :func:`encode_images` runs each and
    names its features by the file's index ("0.grid", "1.grid", ...), as the ensemble's decoders read them."""

    def __init__(self, encoders: list):
        self.encoders = encoders


def model_encoder(model: CaptionModel, weights: str | None = None):
    """The encoder a model was trained on (same name, weights, input size and grid), on the device of the
    model's decoder; an :class:`EncoderGroup` for an ensemble across encoders."""
    if model.sources:
        if weights:
            raise CaptionerError("an ensemble across encoders takes each file's own encoder weights")
        return EncoderGroup([model_encoder(source) for source in model.sources])
    e = model.config.encoder
    fine_tuned = model.encoder_state is not None
    encoder = create_encoder(e.name, weights="none" if fine_tuned else (weights or e.weights),
                             input_size=model.encoder.get("input_size", e.input_size),
                             grid_size=model.encoder.get("grid_size", e.grid_size), layer=e.layer)
    if fine_tuned:  # the model carries its own encoder weights
        encoder.load_state_dict(model.encoder_state)
    return encoder.to(module_device(model.decoder))


def search_size(model: CaptionModel, beam_size: int | None = None, max_len: int | None = None) -> tuple[int, int]:
    """(beam size, longest caption in words) to decode ``model`` with: ``beam_size`` / ``max_len`` when given
    (--beam-size, --max-len), else the model's ``decode.beam_size`` / ``decode.max_len`` (as its file stores
    them, with any --set applied)."""
    d = model.config.decode
    return (d.beam_size if beam_size is None else beam_size), (d.max_len if max_len is None else max_len)


def decode_batches(model: CaptionModel, features: dict[str, torch.Tensor], beam_size: int | None = None,
                   max_len: int | None = None, batch_size: int = 100, reranker=None) -> list[Hypothesis]:
    """Beam-search every row of ``features`` ({"global": [N, D], "grid": [N, L, C]}), ``batch_size`` at a
    time, with the model's decoding settings (beam size and length unless given: :func:`search_size`; length
    penalty, banned words, n-gram blocking, ...).
    ``reranker``: a :class:`~captioner.decoding.rerank.ConsensusReranker` (:func:`consensus_reranker`),
    which the setting ``decode.consensus`` asks for."""
    if model.config.decode.consensus and reranker is None:
        raise CaptionerError("decode.consensus=true reranks with the training captions: evaluate reads them from "
                             "--data, caption and serve from --consensus DATA")
    n = next(iter(features.values())).size(0)
    beam_size, max_len = search_size(model, beam_size, max_len)
    options = model.config.decode.search_options(model.vocab)
    device = module_device(model.decoder)
    decoder = decoding_decoder(model)
    hyps: list[Hypothesis] = []
    for i in range(0, n, batch_size):
        batch = {k: v[i : i + batch_size].to(device).float() for k, v in features.items()}
        if not model.config.decode.consensus:
            hyps += beam_search(decoder, batch, model.vocab.start_id, model.vocab.end_id,
                                beam_size=beam_size, max_len=max_len, **options)
            continue
        nbest = beam_search_nbest(decoder, batch, model.vocab.start_id, model.vocab.end_id,
                                  beam_size=beam_size, max_len=max_len, **options)
        words = [[model.vocab.decode(h.tokens) for h in beams] for beams in nbest]
        hyps += reranker.choose(batch, nbest, words, options["length_penalty"])
    return hyps


def decoding_decoder(model: CaptionModel):
    """The decoder that decodes ``model``: its own, or with ``decode.flip`` each of its decoders twice, on the
    image's features and on the mirrored image's (:func:`with_mirrored`), as one ensemble."""
    from captioner.decoders.ensemble import EnsembleDecoder

    if not model.config.decode.flip:
        return model.decoder
    ensemble = model.decoder if isinstance(model.decoder, EnsembleDecoder) else None
    members = list(ensemble.members) if ensemble else [model.decoder]
    groups = (ensemble.feature_groups if ensemble else None) or [0] * len(members)
    views = len(model.sources) or 1  # the mirrored view of encoder j is feature group j + views
    return EnsembleDecoder(members * 2, groups + [g + views for g in groups], mean=model.config.decode.ensemble_mean,
                           mirrored=[False] * len(members) + [True] * len(members)).eval()


def with_mirrored(model: CaptionModel, feats: dict[str, torch.Tensor],
                  mirrored: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The features of both views for :func:`decoding_decoder`: those of the images as groups 0.. and those of
    the mirrored images as groups G.. (G: the number of encoders; one encoder: "0.grid" and "1.grid")."""
    views = len(model.sources) or 1
    if not model.sources:  # one encoder: its entries ("grid", "global") become group 0's
        feats, mirrored = {f"0.{k}": v for k, v in feats.items()}, {f"0.{k}": v for k, v in mirrored.items()}
    shifted = {}
    for key, v in mirrored.items():
        group, _, name = key.partition(".")
        shifted[f"{int(group) + views}.{name}"] = v
    return feats | shifted


def consensus_reranker(model: CaptionModel, data: str | Path, cache_root: str | Path | None = None,
                       progress: bool = True):
    """The consensus reranker of ``model`` (settings ``decode.consensus_k`` / ``consensus_weight``) over the
    training split of ``data``: its images' global features (an ensemble across encoders: its first file's
    encoder's), and their captions."""
    from captioner.decoding.rerank import ConsensusReranker

    first = model.sources[0] if model.sources else model
    chosen, index = _training_globals(first, data, cache_root, progress)
    d = model.config.decode
    return ConsensusReranker(index, [r.captions for r in chosen], k=d.consensus_k, weight=d.consensus_weight,
                             key="0.global" if model.sources or d.flip else "global", mbr_weight=d.mbr_weight)


def with_consensus(model: CaptionModel, data: str | Path, cache_root: str | Path | None = None,
                   progress: bool = False):
    """``model`` set to rerank its beams (``decode.consensus``), and its reranker over the training split of
    ``data``: what ``caption --consensus DATA`` and ``serve --consensus DATA`` decode with."""
    model = with_settings(model, ["decode.consensus=true"])
    return model, consensus_reranker(model, data, cache_root, progress)


def _training_globals(model: CaptionModel, data: str | Path, cache_root: str | Path | None,
                      progress: bool) -> tuple[list, torch.Tensor]:
    """(records, [N, D] global features) of the training split. A model carrying its own (fine-tuned) encoder
    has no feature cache: its training images are encoded once, 256 at a time, and their global features kept
    in ``<cache>/consensus/<dataset>-<encoder>.pt``."""
    if model.encoder_state is None:
        chosen, feats, _ = _split_features(model, data, "train", cache_root, None, progress)  # the images alone
        return chosen, feats["global"]
    from captioner.data.readers import dataset_fingerprint, load_dataset
    from captioner.features import default_cache_root
    from captioner.io import torch_save_atomic

    dataset = load_dataset(data)
    records = [r for r in dataset.records if r.split == "train"]
    path = Path(cache_root or default_cache_root()) / "consensus" / \
        f"{dataset_fingerprint(dataset)}-{_encoder_key(model)}.pt"
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


def _encoder_key(model: CaptionModel) -> str:
    """16 hex digits identifying a model's own encoder: its description and weights."""
    h = hashlib.sha1(json.dumps(model.encoder, sort_keys=True).encode("utf-8"))
    for name, t in sorted(model.encoder_state.items()):
        h.update(name.encode("utf-8"))
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def caption_files(model: CaptionModel, paths: list[str | Path], beam_size: int | None = None,
                  max_len: int | None = None, batch_size: int = 16,
                  encoder=None) -> tuple[list[dict], list[tuple[str, str]]]:
    """Caption image files. Returns (results, failures); a bad file is reported, the rest still captioned.
    ``beam_size`` / ``max_len``: the model's decoding settings unless given (:func:`search_size`)."""
    results, failures = [], []
    for path, _image, outcome in iter_captions(model, paths, beam_size, max_len, batch_size, encoder):
        if isinstance(outcome, str):
            failures.append((str(path), outcome))
        else:
            results.append(outcome | {"image": str(path)})
    return results, failures


def iter_captions(model: CaptionModel, paths: list[str | Path], beam_size: int | None = None,
                  max_len: int | None = None, batch_size: int = 16, encoder=None, reranker=None):
    """Caption image files ``batch_size`` at a time (memory stays flat for any number of files).

    Yields ``(path, image, result)`` in input order: ``result`` is a :func:`hypothesis_dict`, or for a file
    that could not be read ``image`` is None and ``result`` the one-line error message.
    """
    encoder = encoder or model_encoder(model)
    for i in range(0, len(paths), batch_size):
        chunk = paths[i : i + batch_size]
        images, errors = read_images(chunk)
        kept = [img for img in images if img is not None]
        results = iter(caption_images(model, kept, beam_size, max_len, encoder, reranker)) if kept else iter(())
        for path, img, err in zip(chunk, images, errors, strict=True):
            yield path, img, err if img is None else next(results)


def read_images(paths: list) -> tuple[list, list[str | None]]:
    """Load image files: ([PIL image or None], [None or the one-line error]) in input order."""
    from captioner.data.images import load_image

    images, errors = [], []
    for p in paths:
        try:
            images.append(load_image(p))
            errors.append(None)
        except CaptionerError as e:
            images.append(None)
            errors.append(str(e))
    return images, errors


def caption_images(model: CaptionModel, images: list, beam_size: int | None = None, max_len: int | None = None,
                   encoder=None, reranker=None) -> list[dict]:
    """Caption PIL images (already loaded): one :func:`hypothesis_dict` each."""
    encoder = encoder or model_encoder(model)
    feats = encode_images(encoder, images)
    if model.config.decode.flip:
        feats = with_mirrored(model, feats, encode_images(encoder, [ImageOps.mirror(img) for img in images]))
    hyps = decode_batches(model, feats, beam_size, max_len, reranker=reranker)
    return [hypothesis_dict(model, hyp) for hyp in hyps]


def encode_images(encoder, images: list, batch_size: int = 32) -> dict[str, torch.Tensor]:
    """Encoder features of PIL images, computed now (no cache): {"global": [N, D], "grid": [N, L, C]}, on
    the encoder's device, in float32 (a few images: no fp16 autocast here, unlike feature extraction).
    An :class:`EncoderGroup` gives every encoder's, as {"0.global": .., "0.grid": .., "1.global": .., ...}."""
    if isinstance(encoder, EncoderGroup):
        return {f"{j}.{k}": v for j, one in enumerate(encoder.encoders)
                for k, v in encode_images(one, images, batch_size).items()}
    encoder.freeze()
    device = module_device(encoder)
    tensors = [encoder.preprocess(img) for img in images]  # [3, S, S] each
    outputs = []
    with torch.inference_mode():
        for i in range(0, len(tensors), batch_size):
            batch = torch.stack(tensors[i : i + batch_size]).to(device)  # [b, 3, S, S]
            outputs.append(encoder(batch.contiguous(memory_format=torch.channels_last)))  # ([b, D], [b, L, C])
    return {"global": torch.cat([g for g, _ in outputs]), "grid": torch.cat([x for _, x in outputs])}


def hypothesis_dict(model: CaptionModel, hyp: Hypothesis) -> dict:
    words = model.vocab.decode(hyp.tokens)
    out = {"caption": " ".join(words), "tokens": words, "score": hyp.score, "finished": hyp.finished}
    if hyp.alphas is not None:
        out["attention"] = hyp.alphas.tolist()
        if model.member_configs:  # an ensemble's map per word is its attention members' mean (on one grid)
            positions = hyp.alphas.shape[-1] if hyp.alphas.dim() == 2 else None  # None: no word, no map
            n, total = _attending(model, positions), len(model.member_configs)
            out["attention_of"] = f"the mean map of {n} decoders" if n > 1 else f"the map of 1 of its {total} decoders"
    if hyp.locs is not None:
        out["locations"] = hyp.locs
    return out


def _attending(model: CaptionModel, positions: int | None) -> int:
    """How many of an ensemble's decoders attend over a grid of ``positions`` cells (their maps are averaged;
    None: any grid)."""
    groups = model.decoder.feature_groups or [None] * len(model.decoder.members)
    grids = [(model.sources[g] if g is not None else model).encoder.get("grid_size") for g in groups]
    return sum(1 for m, grid in zip(model.decoder.members, grids, strict=True)
               if m.has_attention and (grid is None or positions is None or grid * grid == positions))


def split_features(model: CaptionModel, data: str | Path, split: str = "val", cache_root: str | Path | None = None,
                   limit: int | None = None, progress: bool = True) -> tuple[list, dict[str, torch.Tensor], list[str]]:
    """The images of a split that the model can caption, their encoder features and the names of the images
    that failed: (records, {"global": [n, D], "grid": [n, L, C]}, failed). Features come from the cache, or
    from the model's own encoder when it carries one (fine-tuned: its features are in no cache). An ensemble
    across encoders gets every file's features, as {"0.grid": .., "1.grid": .., ...}; ``decode.flip`` adds
    those of the mirrored images (:func:`with_mirrored`; cached apart, in a folder ending ``-mirror``)."""
    plain = _split_features(model, data, split, cache_root, limit, progress)
    if not model.config.decode.flip:
        return plain
    chosen, (feats, mirrored), failed = _common_images(
        [plain, _split_features(model, data, split, cache_root, limit, progress, mirror=True)])
    return chosen, with_mirrored(model, feats, mirrored), failed


def _split_features(model: CaptionModel, data, split, cache_root, limit, progress, mirror: bool = False):
    """:func:`split_features` of one view: the images, or (``mirror``) the images flipped left-right."""
    from captioner.data.readers import load_dataset
    from captioner.training.train import load_features, load_mirrored_features, split_rows

    if model.sources:
        return _group_features(model, data, split, cache_root, limit, progress, mirror)
    if model.encoder_state is not None:
        dataset = load_dataset(data)
        by_path = {r.image: r for r in dataset.records if r.split == split}
        paths = list(by_path)[:limit]
        images, errors = read_images(paths)
        chosen = [by_path[p] for p, img in zip(paths, images, strict=True) if img is not None]
        failed = sorted(Path(p).name for p, err in zip(paths, errors, strict=True) if err)
        kept = [(ImageOps.mirror(img) if mirror else img) for img in images if img is not None]
        feats = encode_images(model_encoder(model), kept) if chosen else {}
    else:
        device = str(module_device(model.decoder))
        dataset, records, _, cache = load_features(model.config, data, cache_root, progress, device=device)
        in_split = [r for r in records if r.split == split]
        if mirror and in_split:
            cache = load_mirrored_features(model.config, dataset, in_split, split, cache_root, progress, device)
        failed = sorted(cache.failed)
        chosen, rows = split_rows(records, cache, split, limit)
        global_t, grid_t = cache.load_rows(rows)  # [n, D], [n, L, C]
        feats = {"global": global_t, "grid": grid_t}
    if not chosen:
        raise CaptionerError(f"{data}: no usable images in split '{split}' (splits: {dataset.splits()})")
    return chosen, feats, failed


def _group_features(model: CaptionModel, data, split, cache_root, limit, progress, mirror: bool = False):
    """:func:`split_features` for an ensemble across encoders: each file's, on the images all of them read."""
    chosen, per_source, unread = _common_images([_split_features(source, data, split, cache_root, limit, progress,
                                                                 mirror) for source in model.sources])
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
        aligned.append({k: v[index] for k, v in f.items()})  # [n, ...] in the order of ``chosen``
    unread = {name for _, _, bad in parts for name in bad}  # by any of them: not scored
    unread |= {r.name for records, _, _ in parts for r in records} - common
    return chosen, aligned, sorted(unread)


def evaluate(model: CaptionModel, data: str | Path, split: str = "val", beam_size: int | None = None,
             max_len: int | None = None, cache_root: str | Path | None = None, out: str | Path | None = None,
             tokenizer: str = "auto", metrics: tuple[str, ...] = ("bleu", "meteor", "rouge", "cider"),
             limit: int | None = None, progress: bool = True, report_dir: str | Path | None = None) -> dict:
    """Caption every image of a split (features: :func:`split_features`) and score it with coco-caption.

    ``beam_size`` / ``max_len``: the model's decoding settings unless given (:func:`search_size`); ``out``: JSON
    file for the metrics and per-image captions/scores; ``report_dir``: HTML gallery folder.
    """
    chosen, feats, failed = split_features(model, data, split, cache_root, limit, progress)
    reranker = consensus_reranker(model, data, cache_root, progress) if model.config.decode.consensus else None
    return score_split(model, chosen, feats, failed, str(data), split, beam_size, max_len, out, tokenizer, metrics,
                       report_dir, reranker)


def score_split(model: CaptionModel, chosen: list, feats: dict[str, torch.Tensor], failed: list[str], data: str,
                split: str, beam_size: int | None = None, max_len: int | None = None,
                out: str | Path | None = None,
                tokenizer: str = "auto", metrics: tuple[str, ...] = ("bleu", "meteor", "rouge", "cider"),
                report_dir: str | Path | None = None, reranker=None) -> dict:
    """:func:`evaluate` once the features are there: decode ``feats`` (one row per record of ``chosen``),
    score against the records' captions, and write the report. ``beam_size`` / ``max_len``: :func:`search_size`."""
    beam_size, max_len = search_size(model, beam_size, max_len)
    hyps = decode_batches(model, feats, beam_size, max_len, reranker=reranker)
    candidates = {r.name: " ".join(model.vocab.decode(h.tokens)) for r, h in zip(chosen, hyps, strict=True)}
    references = {r.name: r.captions_raw for r in chosen}
    corpus, per_image = score_corpus(candidates, references, metrics=metrics, tokenizer=tokenizer)
    report = {
        "data": data, "split": split, "images": len(chosen), "beam_size": beam_size,
        "metrics": {k: corpus[k] for k in METRIC_NAMES if k in corpus},
        "skipped": failed,
        "captions": [{"image": r.name, "caption": candidates[r.name], "references": references[r.name],
                      "scores": per_image[r.name]} for r in chosen],
    }
    if out:
        write_json_atomic(out, report)
    if report_dir:
        from captioner.viz.report import write_report

        write_report(report, report_dir, {r.name: r.image for r in chosen})
    return report
