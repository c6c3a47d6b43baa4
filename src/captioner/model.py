"""A trained captioning model in memory: its decoder(s), vocabulary, config and encoder, and its settings.

:class:`CaptionModel` is what every layer above the decoders works with; model files
(:mod:`captioner.checkpoint`) read and write it. An ensemble is one :class:`CaptionModel` whose decoder is an
:class:`~captioner.decoders.ensemble.EnsembleDecoder` (:func:`join`), across encoders too (``sources``).
"""

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from captioner.config import Config, with_decode_settings
from captioner.data.vocab import Vocab
from captioner.decoders import Decoder
from captioner.devices import module_device
from captioner.errors import CaptionerError, file_error


@dataclass
class CaptionModel:
    decoder: Decoder
    vocab: Vocab
    config: Config
    encoder: dict  # the encoder's describe(): name, weights, input_size, grid_size, dims
    metrics: dict = field(default_factory=dict)
    encoder_state: dict | None = None  # fine-tuned encoder weights (None: the encoder's own weights)
    # an ensemble's members' own configs, in the order of decoder.members (empty: a single decoder, whose
    # config is ``config``); ``config`` then holds the decoding settings of the whole
    member_configs: list[Config] = field(default_factory=list)
    # an ensemble across encoders (:func:`join`): one of the model files it joins per distinct encoder;
    # the decoders of group j read feature group j ("j.grid", ...). Empty: one encoder for all.
    sources: list["CaptionModel"] = field(default_factory=list)
    # consensus reranking's index, carried in the model file (``captioner export --consensus DATA``): a
    # dataset's training images' global features {"features": [N, D] (the first encoder's), "captions": each
    # image's tokenised captions, "source": where they came from}; None: rerank only with a dataset given
    consensus_index: dict | None = None

    @property
    def kind(self) -> str:
        """What decodes, for people: "soft", or "ensemble of 2: soft + nic" (+ " on 2 encoders")."""
        types = [c.model.type for c in self.member_configs]
        encoders = f" on {len(self.sources)} encoders" if self.sources else ""
        return f"ensemble of {len(types)}: {' + '.join(types)}{encoders}" if types else self.config.model.type

    def parts(self) -> list[tuple[Decoder, Config]]:
        """Each decoder with its own config: one pair, or an ensemble's members in order."""
        if self.member_configs:
            return list(zip(self.decoder.members, self.member_configs, strict=True))
        return [(self.decoder, self.config)]

    def member(self, n: int) -> "CaptionModel":
        """The ``n``-th decoder (counting from 1) as a model of its own: an ensemble's member with its own
        config, the encoder and vocabulary they share, and the whole's decoding settings."""
        parts = self.parts()
        if not 1 <= n <= len(parts):
            raise CaptionerError(f"--member {n}: the model has {len(parts)} decoder(s) ({self.kind}); "
                                 f"choose 1 to {len(parts)}")
        decoder, config = parts[n - 1]
        own = self.sources[self.decoder.feature_groups[n - 1]] if self.sources else self  # its encoder's file
        first_group = not self.sources or self.decoder.feature_groups[n - 1] == 0  # (whose features the index holds)
        return CaptionModel(decoder, self.vocab, dataclasses.replace(config, decode=self.config.decode),
                            own.encoder, dict(self.metrics), own.encoder_state,
                            consensus_index=self.consensus_index if first_group else None)

    def to(self, device: str | torch.device) -> "CaptionModel":
        """Move the decoder (and with it the encoder :func:`model_encoder` builds)."""
        self.decoder.to(device)
        return self


def with_settings(model: CaptionModel, overrides: list[str]) -> CaptionModel:
    """``model`` decoding with ``--set`` overrides (:func:`~captioner.config.with_decode_settings`): decode.*
    for the whole, and model.hard_inference for every hard-attention decoder in it."""
    from captioner.decoders.ensemble import EnsembleDecoder

    model.config = with_decode_settings(model.config, overrides)
    if isinstance(model.decoder, EnsembleDecoder):  # how it averages its members
        model.decoder.mean = model.config.decode.ensemble_mean
    if any(o.partition("=")[0] == "model.hard_inference" for o in overrides):
        set_hard_inference(model, model.config.model.hard_inference)  # (validated by with_decode_settings)
    return model


def set_hard_inference(model: CaptionModel, mode: str) -> None:
    """Decode every hard-attention decoder of ``model`` with ``mode``'s context: argmax | expected | sample."""
    parts = model.parts()
    if not any(c.model.type == "hard" for _, c in parts):
        raise CaptionerError(f"--set model.hard_inference={mode}: the model ({model.kind}) has no hard-attention "
                             "decoder")

    def changed(c: Config) -> Config:
        return dataclasses.replace(c, model=dataclasses.replace(c.model, hard_inference=mode)) \
            if c.model.type == "hard" else c

    for decoder, config in parts:
        if config.model.type == "hard":
            decoder.hard_inference = mode
    model.member_configs = [changed(c) for c in model.member_configs]  # (sources only lend their encoders)


def check_one_encoder(model: CaptionModel, path: str | Path) -> None:
    """A model file holds one encoder: an ensemble across encoders stays its files."""
    if model.sources:
        raise file_error(path, f"cannot write an ensemble across {len(model.sources)} encoders: a model file "
                         "holds one encoder (pass the files with --model each time instead)")


def join(models: list[CaptionModel], names: list[str] | None = None) -> CaptionModel:
    """Several models decoding as one test-time ensemble (:class:`EnsembleDecoder`); one model as it is.

    The members must share the vocabulary; decoding settings come from the first. A model that is an
    ensemble already adds all its decoders. Models whose decoders read the same encoder features
    (:func:`same_features`) share one encoder; when there are several such groups the ensemble runs across
    encoders: every decoder reads the features of its own model's encoder (``CaptionModel.sources``, one model
    per group), at the cost of one encoder pass per group. ``names``: the models' files, for messages.
    """
    from captioner.decoders.ensemble import EnsembleDecoder

    names = names or [f"model {i + 1}" for i in range(len(models))]
    if len(models) == 1:
        return models[0]
    first = models[0]
    for name, m in zip(names[1:], models[1:], strict=True):
        if m.vocab != first.vocab:
            raise file_error(name, f"cannot join an ensemble with {names[0]}: different vocabularies")
    sources, parts, groups = [], [], []
    for m in models:  # an ensemble's members join one by one
        group = next((g for g, s in enumerate(sources) if same_features(s, m)), None)
        if group is None:
            sources.append(m)
            group = len(sources) - 1
        parts += m.parts()
        groups += [group] * len(m.parts())
    one_encoder = len(sources) == 1
    decoder = EnsembleDecoder([d for d, _ in parts], feature_groups=None if one_encoder else groups,
                              mean=first.config.decode.ensemble_mean).eval()
    return CaptionModel(decoder, first.vocab, first.config, first.encoder, {"ensemble": [str(n) for n in names]},
                        encoder_state=first.encoder_state if one_encoder else None,
                        member_configs=[c for _, c in parts], sources=[] if one_encoder else sources,
                        consensus_index=first.consensus_index)


def same_features(a: CaptionModel, b: CaptionModel) -> bool:
    """Whether two models' decoders read the same encoder features: the same encoder, weights, input size,
    grid and layer, and the same fine-tuned weights if they carry any (equal tensors of the same type)."""
    keys = ("name", "weights", "input_size", "grid_size", "layer")
    if any(a.encoder.get(k) != b.encoder.get(k) for k in keys):
        return False
    if a.encoder_state is None or b.encoder_state is None:
        return a.encoder_state is None and b.encoder_state is None
    return a.encoder_state.keys() == b.encoder_state.keys() and all(
        v.dtype == b.encoder_state[k].dtype and torch.equal(v, b.encoder_state[k]) for k, v in a.encoder_state.items())


class EncoderGroup:
    """The encoders of an ensemble across encoders, one per source model: their features are named by the
    source's index ("0.grid", "1.grid", ...), as the ensemble's decoders read them."""

    def __init__(self, encoders: list):
        self.encoders = encoders


def encoder_key(model: CaptionModel) -> str:
    """16 hex digits identifying a model's encoder: its description and, when it carries them, its weights."""
    import hashlib
    import json

    h = hashlib.sha1(json.dumps(model.encoder, sort_keys=True).encode("utf-8"))
    for name, t in sorted((model.encoder_state or {}).items()):
        h.update(name.encode("utf-8"))
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def pick_backend(backend: str, device: torch.device) -> str:
    """``torch`` or ``onnx`` for ``--backend torch|onnx|auto``: auto is ONNX Runtime on a CPU where it is
    installed, else torch."""
    from captioner.encoders.onnx import onnx_available

    if backend not in ("auto", "torch", "onnx"):
        raise CaptionerError(f"--backend {backend}: choose auto, torch or onnx")
    if backend == "onnx" and not onnx_available():
        raise CaptionerError("--backend onnx: onnxruntime is not installed (pip install 'captioner[onnx]')")
    if backend == "onnx" and device.type != "cpu":
        raise CaptionerError("--backend onnx runs on the CPU; use --device cpu (or --backend torch on a GPU)")
    if backend == "auto":
        return "onnx" if device.type == "cpu" and onnx_available() else "torch"
    return backend


def onnx_encoder(model: CaptionModel, cache_root: str | Path | None = None):
    """The model's encoder exported to ONNX (once, into ``<cache>/onnx/<encoder key>/``) and run by ONNX
    Runtime; an :class:`EncoderGroup` of them for an ensemble across encoders."""
    from captioner.encoders.onnx import OnnxEncoder, check_export, export_onnx
    from captioner.features import default_cache_root

    if model.sources:
        return EncoderGroup([onnx_encoder(source, cache_root) for source in model.sources])
    folder = Path(cache_root or default_cache_root()) / "onnx" / encoder_key(model)
    try:
        path, description = check_export(folder)
    except CaptionerError:  # not exported yet (or a broken export): build the encoder and export it now
        encoder = model_encoder(model)
        path, description = export_onnx(encoder, folder / "encoder.onnx"), encoder.describe()
    return OnnxEncoder(path, description)


def model_encoder(model: CaptionModel, weights: str | None = None):
    """The encoder a model was trained on (same name, weights, input size and grid; a fine-tuned one from the
    weights the model carries), on the device of the model's decoder; an :class:`EncoderGroup` for an ensemble
    across encoders. ``weights``: other weights for the encoder (a local file)."""
    from captioner.encoders import create_encoder

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
    return encoder.to(module_device(model.decoder)).eval()
