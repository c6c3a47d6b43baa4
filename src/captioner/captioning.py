"""Captioning images with a trained model: the :class:`Captioner` every caller uses (the Python API, the CLI's
``caption`` and ``evaluate``, the web server), and the steps it is made of.

    image files / PIL images / arrays --read + to RGB--> encoder (built once) --features--> one batched beam
    search (optionally both views of the image, an ensemble, consensus reranking) --> :class:`Caption`

The encoder runs once per batch of images; the decoder(s) decode the whole batch in one beam search.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from captioner.config import DecodeConfig
from captioner.decoding import Hypothesis, beam_search, beam_search_nbest
from captioner.devices import module_device
from captioner.errors import CaptionerError
from captioner.model import CaptionModel, EncoderGroup, model_encoder, onnx_encoder, with_settings

# the decoding settings a Captioner takes, as keyword arguments of load() and of each call: the decode
# section of a config, and hard attention's context
DECODE_SETTINGS = tuple(f.name for f in dataclasses.fields(DecodeConfig))
SETTINGS = (*DECODE_SETTINGS, "hard_inference")
ImageInput = str | Path | Image.Image | np.ndarray | torch.Tensor


@dataclass
class Caption:
    """One image's caption.

    ``text``: the caption; ``tokens``: its words; ``score``: the beam's log-probability score (as the length
    penalty ranks it); ``attention``: one ``[g, g]`` map per word, ``[T, g, g]`` (None for a model without
    attention, NIC); ``locations``: hard attention's chosen cell per word (decoded with argmax or sample);
    ``finished``: False when cut at the longest caption; ``source``: the file, or ``image N`` for an image given
    in memory; ``error``: why the image could not be captioned (then ``text`` is empty); ``looked``: for a model
    with a visual sentinel (adaptive attention), the share of each word's attention on the image, 1 - beta_t
    (the rest went to the sentinel, the language model; each map of ``attention`` sums to it).
    """

    text: str = ""
    tokens: list[str] = field(default_factory=list)
    score: float = float("nan")
    attention: np.ndarray | None = None
    locations: list[int] | None = None
    finished: bool = True
    source: str | None = None
    error: str | None = None
    attention_of: str | None = None  # what the maps are when not one decoder's (an ensemble's mean map)
    looked: list[float] | None = None
    # an image given in memory, as captioned (for save and figure; an image file is read again instead)
    image: Image.Image | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        """JSON-ready: caption, tokens, score, finished; attention as one flat list of g*g weights per word (and
        ``looked`` per word, for a model with a visual sentinel)."""
        if self.error is not None:
            return {"image": self.source, "error": self.error}
        out = {"caption": self.text, "tokens": self.tokens, "score": self.score, "finished": self.finished}
        if self.attention is not None:
            out["attention"] = [m.ravel().tolist() for m in self.attention]  # [T][g*g]
            if self.attention_of:
                out["attention_of"] = self.attention_of
        if self.looked is not None:
            out["looked"] = self.looked
        if self.locations is not None:
            out["locations"] = self.locations
        return out | ({"image": self.source} if self.source is not None else {})


class Captioner:
    """A model ready to caption: its decoder(s), their encoder(s) built once, the vocabulary and the decoding
    settings. Make one with :func:`captioner.load`; call it on images.

    >>> cap = captioner.load()                       # the shipped model
    >>> cap("photo.jpg").text                        # one image -> a Caption
    >>> [c.text for c in cap(["a.jpg", pil_image])]  # a list -> a list of Captions, encoded as one batch
    >>> cap("photo.jpg", beam_size=3, block_ngram=3)  # other decoding settings for this call

    Calls are thread-safe (they run one at a time: two decodings at once would each run slower than both in
    turn).
    """

    def __init__(self, model: CaptionModel, reranker=None, backend: str = "torch"):
        self.model = model
        self.reranker = reranker  # consensus reranking with a dataset's training captions (decode.consensus)
        self.backend = backend  # the encoder's: torch, or onnx (ONNX Runtime, on a CPU)
        self._encoder = None
        self._lock = threading.RLock()

    @property
    def encoder(self):
        """The model's encoder, built on first use (scoring cached features never needs it)."""
        with self._lock:
            if self._encoder is None:
                self._encoder = onnx_encoder(self.model) if self.backend == "onnx" else model_encoder(self.model)
            return self._encoder

    # -- what it is ------------------------------------------------------------------------------------------

    @property
    def kind(self) -> str:
        """What decodes, for people: "soft", or "ensemble of 2: soft + nic" (+ " on 2 encoders")."""
        return self.model.kind

    @property
    def has_attention(self) -> bool:
        """Whether its captions come with attention maps (every decoder but NIC)."""
        return self.model.decoder.has_attention

    @property
    def vocab(self):
        return self.model.vocab

    @property
    def settings(self) -> dict:
        """The decoding settings it uses unless a call says otherwise."""
        d = self.model.config.decode
        out = {name: getattr(d, name) for name in DECODE_SETTINGS}
        hard = [c for _, c in self.model.parts() if c.model.type == "hard"]
        return out | ({"hard_inference": hard[0].model.hard_inference} if hard else {})

    def __repr__(self) -> str:
        return (f"Captioner({self.kind}, beam {self.model.config.decode.beam_size}, on {self.device}, "
                f"encoder on {self.backend})")

    @property
    def device(self) -> torch.device:
        return module_device(self.model.decoder)

    # -- captioning ------------------------------------------------------------------------------------------

    def __call__(self, images: ImageInput | Sequence[ImageInput], *, batch_size: int = 16,
                 **settings) -> Caption | list[Caption]:
        """Caption one image (-> a :class:`Caption`) or a list of them (-> a list, in order).

        An image is a file path, a PIL image, a numpy array (``[H, W, 3]`` uint8 0..255 or float 0..1) or a
        torch tensor (``[3, H, W]``, as torchvision makes them). A list is encoded ``batch_size`` images at a
        time and decoded in one beam search per batch; an image that cannot be read or converted gives a
        :class:`Caption` with ``error`` set, and the others are captioned. ``settings``: decoding settings for
        this call (``beam_size``, ``max_len``, ``length_penalty``, ``block_ngram``, ``hard_inference``, ``flip``,
        ... : ``Captioner.settings`` lists them with their values).
        """
        one = not isinstance(images, list | tuple)
        items = [images] if one else list(images)
        results = [c for _, _, c in self.caption_iter(items, batch_size=batch_size, **settings)]
        return results[0] if one else results

    def caption_iter(self, items: Iterable[ImageInput], *, batch_size: int = 16,
                     **settings) -> Iterator[tuple[ImageInput, Image.Image | None, Caption]]:
        """Caption images ``batch_size`` at a time, yielding ``(item, image, caption)`` in input order as each
        batch is done (memory stays flat for any number of images); ``image`` is the RGB image that was
        captioned, None when it could not be read (``caption.error`` says why). The next batch's files are
        read and resized in a second thread while this one is encoded and decoded."""
        for batch in self._read_ahead(items, batch_size):
            good = [(img, tensor) for _, img, _, _, tensor in batch if img is not None]
            done = iter(self.caption_images([img for img, _ in good], tensors=[t for _, t in good], **settings)
                        if good else ())
            for item, img, source, error, _ in batch:
                in_memory = None if isinstance(item, str | Path) else img
                yield item, img, (Caption(source=source, error=error) if img is None else
                                  dataclasses.replace(next(done), source=source, image=in_memory))

    def _read_ahead(self, items: Iterable[ImageInput], batch_size: int) -> Iterator[list[tuple]]:
        """Batches of ``(item, RGB image or None, source, error or None, encoder input or None)``, each read
        in a worker thread while the caller works on the one before (decoding JPEGs releases the GIL)."""
        from concurrent.futures import ThreadPoolExecutor

        preprocess = self.encoder.preprocess if not isinstance(self.encoder, EncoderGroup) else None

        def read(chunk: list[tuple[int, ImageInput]]) -> list[tuple]:
            from captioner.data.images import as_image, load_image

            out = []
            for i, item in chunk:
                source = str(item) if isinstance(item, str | Path) else f"image {i + 1}"
                try:
                    img = load_image(item) if isinstance(item, str | Path) else as_image(item, source)
                    out.append((item, img, source, None, preprocess(img) if preprocess else None))
                except CaptionerError as e:
                    out.append((item, None, source, str(e), None))
            return out

        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = None
            for chunk in _chunks(enumerate(items), batch_size):
                future = pool.submit(read, chunk)
                if pending is not None:
                    yield pending.result()
                pending = future
            if pending is not None:
                yield pending.result()

    def caption_images(self, images: list[Image.Image], tensors: list[torch.Tensor] | None = None,
                       **settings) -> list[Caption]:
        """Caption RGB PIL images, already read, as one batch: one encoder pass, one beam search. ``tensors``:
        the images already made the encoder's input (its ``preprocess``)."""
        with self._lock, self.using(**settings):
            feats = encode_images(self.encoder, images, tensors=tensors)
            if self.model.config.decode.flip:  # both views: the images, and the images flipped left-right
                feats = with_mirrored(self.model, feats,
                                      encode_images(self.encoder, [ImageOps.mirror(img) for img in images]))
            return self._decode(feats)

    def decode(self, features: dict[str, torch.Tensor], **settings) -> list[Caption]:
        """Caption images from their encoder features (rows of a feature cache: ``{"global": [N, D], "grid":
        [N, L, C]}``, or per encoder and view as :func:`captioner.evaluation.split_features` gives them)."""
        with self._lock, self.using(**settings):
            return self._decode(features)

    def _decode(self, features: dict[str, torch.Tensor]) -> list[Caption]:
        hyps = decode_batches(self.model, features, reranker=self.reranker)
        return [caption_of(self.model, h) for h in hyps]

    @contextmanager
    def using(self, **settings) -> Iterator[CaptionModel]:
        """Within the ``with`` block the model decodes with ``settings`` (see :meth:`__call__`); after it, as
        before. Unknown settings and bad values are one-line errors."""
        with self._applied(settings, needs_reranker=True) as model:
            yield model

    @contextmanager
    def _applied(self, settings: dict, needs_reranker: bool) -> Iterator[CaptionModel]:
        overrides = settings_overrides(settings)
        if not overrides:
            yield self.model
            return
        with self._lock:
            saved = _decoding_state(self.model)
            try:
                with_settings(self.model, overrides)
                if needs_reranker and self.model.config.decode.consensus and self.reranker is None:
                    raise CaptionerError("consensus reranking needs the training captions of a dataset: "
                                         "captioner.load(..., consensus=DATA)")
                self._sync_reranker()
                yield self.model
            finally:
                _restore_decoding_state(self.model, saved)
                self._sync_reranker()

    def _sync_reranker(self) -> None:
        """The reranker's k and weights as the model's decoding settings now say (a call may change them)."""
        if self.reranker is not None:
            d = self.model.config.decode
            self.reranker.k, self.reranker.weight, self.reranker.mbr_weight = \
                d.consensus_k, d.consensus_weight, d.mbr_weight

    # -- showing ---------------------------------------------------------------------------------------------

    def figure(self, result: Caption, image: ImageInput | None = None):
        """The per-word attention figure of ``result`` over its image (a matplotlib Figure; ``image``: default,
        the one it was made from); for a model without attention, the image with its caption."""
        from captioner.viz.attention import attention_figure
        from captioner.viz.draw import captioned_image

        img = _image_of(result, image)
        if result.attention is None:
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots()
            ax.imshow(captioned_image(img, result.text))
            ax.axis("off")
            return fig
        alphas = [m.ravel() for m in result.attention]  # [T][g*g]
        return attention_figure(img, result.tokens, alphas, result.locations, caption=result.text,
                                note=result.attention_of, looked=result.looked)

    def save(self, results: Caption | list[Caption], out_dir: str | Path,
             images: list[ImageInput] | None = None) -> Path:
        """Write, per result, the image with its caption (``OUT/NAME.jpg``) and its attention figure
        (``OUT/NAME.attention.png``), and all captions in ``OUT/captions.json``. ``images``: the images in
        the order of ``results`` (default: the image a result was made from, read again from its file).
        Returns ``out_dir``."""
        from captioner.viz.outputs import OutputFolder

        results = [results] if isinstance(results, Caption) else list(results)
        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            raise CaptionerError(f"{out}: not a folder")
        folder = OutputFolder(out, self.kind, self.has_attention)
        for i, result in enumerate(results):
            if result.error is not None:
                folder.skip(result.error)
                continue
            img = _image_of(result, images[i] if images is not None else None)
            folder.add(result.source or f"image_{i + 1}", img, result.to_dict())
        folder.close()
        return out

    # -- scoring ---------------------------------------------------------------------------------------------

    def evaluate(self, data: str | Path, split: str = "val", **kwargs) -> dict:
        """Caption every image of a dataset's split and score it (see :func:`captioner.evaluation.evaluate`)."""
        from captioner.evaluation import evaluate

        settings = {k: kwargs.pop(k) for k in list(kwargs) if k in SETTINGS}
        carried = any(m.encoder_state is not None for m in (self.model.sources or [self.model]))
        if carried and self.backend != "torch":  # its features are computed: by this Captioner's encoder
            kwargs.setdefault("encoder", self.encoder)
        with self._lock, self._applied(settings, needs_reranker=False):  # consensus: the data's training split
            return evaluate(self.model, data, split, **kwargs)


def _image_of(result: Caption, given: ImageInput | None = None) -> Image.Image:
    """The RGB image a result is drawn over: ``given``, else the one it was made from (kept when given in
    memory, read again from its file otherwise)."""
    from captioner.data.images import as_image, load_image

    image = given if given is not None else (result.image if result.image is not None else result.source)
    return load_image(image) if isinstance(image, str | Path) else as_image(image, result.source or "image")


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    """``items`` in lists of ``size`` (the last one shorter)."""
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def settings_overrides(settings: dict) -> list[str]:
    """Keyword settings as ``--set`` overrides: ``beam_size=3`` -> ``decode.beam_size=3`` (None: unchanged). An
    unknown name is a one-line error."""
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise CaptionerError(f"unknown decoding setting(s) {', '.join(unknown)}; settings: {', '.join(SETTINGS)}")
    out = []
    for name, value in settings.items():
        if value is None:
            continue
        text = str(value).lower() if isinstance(value, bool) else str(value)
        out.append(f"{'model' if name == 'hard_inference' else 'decode'}.{name}={text}")
    return out


def _decoding_state(model: CaptionModel) -> tuple:
    """What :func:`with_settings` changes: the configs, an ensemble's averaging, hard decoders' context."""
    hard = [(d, d.hard_inference) for d, c in model.parts() if c.model.type == "hard"]
    return model.config, list(model.member_configs), getattr(model.decoder, "mean", None), hard


def _restore_decoding_state(model: CaptionModel, saved: tuple) -> None:
    model.config, model.member_configs, mean, hard = saved
    if mean is not None:
        model.decoder.mean = mean
    for decoder, mode in hard:
        decoder.hard_inference = mode


# -- the steps ---------------------------------------------------------------------------------------------


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


def encode_images(encoder, images: list, batch_size: int = 32,
                  tensors: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Encoder features of PIL images, computed now (no cache): {"global": [N, D], "grid": [N, L, C]}, on
    the encoder's device, in float32 (a few images: no fp16 autocast here, unlike feature extraction).
    An :class:`EncoderGroup` gives every encoder's, as {"0.global": .., "0.grid": .., "1.global": .., ...}.
    ``tensors``: the images already preprocessed by this encoder."""
    if isinstance(encoder, EncoderGroup):
        return {f"{j}.{k}": v for j, one in enumerate(encoder.encoders)
                for k, v in encode_images(one, images, batch_size).items()}
    encoder.freeze()
    device = module_device(encoder)
    if tensors is None or any(t is None for t in tensors):
        tensors = [encoder.preprocess(img) for img in images]  # [3, S, S] each
    outputs = []
    with torch.inference_mode():
        for i in range(0, len(tensors), batch_size):
            batch = torch.stack(tensors[i : i + batch_size]).to(device)  # [b, 3, S, S]
            outputs.append(encoder(batch.contiguous(memory_format=torch.channels_last)))  # ([b, D], [b, L, C])
    return {"global": torch.cat([g for g, _ in outputs]), "grid": torch.cat([x for _, x in outputs])}


def search_size(model: CaptionModel, beam_size: int | None = None, max_len: int | None = None) -> tuple[int, int]:
    """(beam size, longest caption in words) to decode ``model`` with: ``beam_size`` / ``max_len`` when given,
    else the model's ``decode.beam_size`` / ``decode.max_len`` (as its file stores them, with any settings
    applied)."""
    d = model.config.decode
    return (d.beam_size if beam_size is None else beam_size), (d.max_len if max_len is None else max_len)


def decode_batches(model: CaptionModel, features: dict[str, torch.Tensor], beam_size: int | None = None,
                   max_len: int | None = None, batch_size: int = 100, reranker=None) -> list[Hypothesis]:
    """Beam-search every row of ``features`` ({"global": [N, D], "grid": [N, L, C]}), ``batch_size`` at a
    time, with the model's decoding settings (beam size and length unless given: :func:`search_size`; length
    penalty, banned words, n-gram blocking, ...).
    ``reranker``: a :class:`~captioner.decoding.rerank.ConsensusReranker`
    (:func:`captioner.model_features.consensus_reranker`), which the setting ``decode.consensus`` asks for."""
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


def caption_of(model: CaptionModel, hyp: Hypothesis) -> Caption:
    """A decoded beam as a :class:`Caption` (its attention maps as ``[T, g, g]`` when the grid is square; with a
    visual sentinel, how much each word looked at the image: the sum of its map)."""
    words = model.vocab.decode(hyp.tokens)
    out = Caption(" ".join(words), words, float(hyp.score), finished=bool(hyp.finished), locations=hyp.locs)
    if hyp.alphas is not None:
        alphas = hyp.alphas.detach().float().cpu().numpy()  # [T, L]
        side = round(alphas.shape[-1] ** 0.5) if alphas.ndim == 2 else 0
        out.attention = alphas.reshape(len(words), side, side) if side * side == alphas.shape[-1] else alphas
        if model.member_configs:  # an ensemble's map per word is its attention members' mean (on one grid)
            positions = alphas.shape[-1] if alphas.ndim == 2 else None  # None: no word, no map
            n, total = _attending(model, positions), len(model.member_configs)
            out.attention_of = f"the mean map of {n} decoders" if n > 1 else f"the map of 1 of its {total} decoders"
        if model.decoder.has_sentinel:
            out.looked = [round(float(v), 4) for v in alphas.sum(axis=-1)]  # 1 - beta_t per word: [T]
    return out


def _attending(model: CaptionModel, positions: int | None) -> int:
    """How many of an ensemble's decoders attend over a grid of ``positions`` cells (their maps are averaged;
    None: any grid)."""
    groups = model.decoder.feature_groups or [None] * len(model.decoder.members)
    grids = [(model.sources[g] if g is not None else model).encoder.get("grid_size") for g in groups]
    return sum(1 for m, grid in zip(model.decoder.members, grids, strict=True)
               if m.has_attention and (grid is None or positions is None or grid * grid == positions))
