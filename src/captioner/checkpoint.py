"""Model files: state_dict + vocab + config + encoder description, never pickled modules.

Everything in a model file is tensors, numbers, strings, lists and dicts, so it loads with
``torch.load(weights_only=True)``: a tampered or foreign file is rejected instead of executed. The vocab
travels inside the model, so a model can never be paired with the wrong word list.
"""

import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch

from captioner.config import Config
from captioner.data.vocab import Vocab
from captioner.decoders import Decoder, build_decoder
from captioner.errors import file_error
from captioner.io import torch_save_atomic

MODEL_FORMAT = "captioner-model/1"
# the same, with the encoder's weight tensors stored in int8: a version that cannot dequantize them refuses
# the file instead of loading integers as weights
MODEL_FORMAT_INT8 = "captioner-model/1+int8-encoder"


@dataclass
class CaptionModel:
    decoder: Decoder
    vocab: Vocab
    config: Config
    encoder: dict  # the encoder's describe(): name, weights, input_size, grid_size, dims
    metrics: dict = field(default_factory=dict)
    encoder_state: dict | None = None  # fine-tuned encoder weights (None: the encoder's own weights)

    def to(self, device: str | torch.device) -> "CaptionModel":
        """Move the decoder (and with it the encoder :func:`~captioner.inference.model_encoder` builds)."""
        self.decoder.to(device)
        return self


def save_model(path: str | Path, model: CaptionModel, half: bool = False, int8_encoder: bool = False) -> Path:
    """Write ``model``; ``half``: floats in float16; ``int8_encoder``: the fine-tuned encoder's convolution
    and linear weights in int8 (one scale per output channel), about a quarter of their float32 size."""
    state = {k: v.detach().cpu() for k, v in model.decoder.state_dict().items()}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    encoder_state, scales = _cast(model.encoder_state, half), None
    if int8_encoder:
        if model.encoder_state is None:
            raise file_error(path, "int8 encoder storage needs a model that carries its encoder's weights")
        encoder_state, scales = quantize_int8(encoder_state)
    return torch_save_atomic(path, {
        "format": MODEL_FORMAT_INT8 if int8_encoder else MODEL_FORMAT,
        "config": model.config.to_dict(),
        "vocab": model.vocab.to_dict(),
        "encoder": dict(model.encoder),
        "global_dim": int(model.encoder["global_dim"]),
        "grid_dim": int(model.encoder["grid_dim"]),
        "metrics": dict(model.metrics),
        "state_dict": state,
        "encoder_state_dict": encoder_state,
        **({"encoder_int8_scales": scales} if int8_encoder else {}),
    })


def quantize_int8(state: dict) -> tuple[dict, dict]:
    """Weight tensors of 2 or more dimensions (convolutions, linear layers) -> int8, symmetric, one float32
    scale per output channel (dim 0); other entries (biases, batch-norm) unchanged. Returns (state, scales)."""
    out, scales = dict(state), {}
    for k, v in state.items():
        if v.is_floating_point() and v.dim() >= 2:
            w = v.float()
            scale = w.abs().amax(dim=tuple(range(1, w.dim())), keepdim=True).clamp_min(1e-12) / 127  # [C, 1, ..]
            out[k] = torch.round(w / scale).clamp(-127, 127).to(torch.int8)
            scales[k] = scale.flatten()  # [C]
    return out, scales


def dequantize_int8(state: dict, scales: dict) -> dict:
    out = dict(state)
    for k, scale in scales.items():
        q = state[k]
        out[k] = q.float() * scale.float().view(-1, *([1] * (q.dim() - 1)))
    return out


def _cast(state: dict | None, half: bool) -> dict | None:
    if state is None:
        return None
    return {k: v.half() if half and v.is_floating_point() else v for k, v in state.items()}


def _read(path: Path) -> dict:
    if not path.exists():
        raise file_error(path, "no such model file")
    if path.is_dir():
        raise file_error(path, "is a directory, not a model file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise file_error(path, f"refused: not a plain-tensor checkpoint ({str(e).splitlines()[0][:120]})") from None
    except Exception as e:  # torch.load fails in many ways on a foreign file (struct, zip, EOF, ...)
        raise file_error(path, f"not a readable checkpoint ({str(e).splitlines()[0][:120]})") from None
    if not isinstance(obj, dict):
        raise file_error(path, "not a captioner model file")
    return obj


PRETRAINED = Path(__file__).parent / "pretrained" / "model.pt"  # the model shipped inside the package


def default_model_path() -> Path:
    """The shipped model, used when a command is given no ``--model``."""
    if not PRETRAINED.is_file():
        raise file_error(PRETRAINED, "no model ships with this installation; pass --model (a run's model.pt)")
    return PRETRAINED


def load_model(path: str | Path) -> CaptionModel:
    """Load a model file written by :func:`save_model`, or a Lightning checkpoint of a training run."""
    path = Path(path)
    obj = _read(path)
    if obj.get("format") in (MODEL_FORMAT, MODEL_FORMAT_INT8):
        hp, state = obj, obj["state_dict"]
        metrics = obj.get("metrics", {})
        encoder_state = obj.get("encoder_state_dict")
        if obj["format"] == MODEL_FORMAT_INT8:
            encoder_state = dequantize_int8(encoder_state, obj["encoder_int8_scales"])
    elif "hyper_parameters" in obj and "state_dict" in obj:  # Lightning checkpoint (best.ckpt / last.ckpt)
        hp = obj["hyper_parameters"]
        state = {k.removeprefix("decoder."): v for k, v in obj["state_dict"].items() if k.startswith("decoder.")}
        encoder_state = {k.removeprefix("encoder."): v for k, v in obj["state_dict"].items()
                         if k.startswith("encoder.")} or None
        metrics = {}
    else:
        raise file_error(path, "not a captioner model file (no 'format' or Lightning hyper_parameters)")
    try:
        config = Config.from_saved(hp["config"], source=str(path))
        vocab = Vocab.from_dict(hp["vocab"])
        decoder = build_decoder(config.model, len(vocab), int(hp["global_dim"]), int(hp["grid_dim"]))
        decoder.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except (KeyError, TypeError, RuntimeError) as e:
        raise file_error(path, f"model file does not match its config ({str(e).splitlines()[0][:160]})") from None
    decoder.eval()
    encoder = hp.get("encoder") or {"name": config.encoder.name, "weights": config.encoder.weights,
                                   "global_dim": hp["global_dim"], "grid_dim": hp["grid_dim"]}
    if encoder_state is not None:
        encoder_state = {k: v.float() if v.is_floating_point() else v for k, v in encoder_state.items()}
    return CaptionModel(decoder, vocab, config, dict(encoder), dict(metrics), encoder_state)


def load_models(paths: list[str | Path]) -> CaptionModel:
    """One model file, or several decoding as a test-time ensemble (:class:`EnsembleDecoder`).

    The members must share the vocabulary and the encoder features (same encoder, weights, input size and
    grid) and must not carry fine-tuned encoders; decoding settings come from the first.
    """
    from captioner.decoders.ensemble import EnsembleDecoder

    models = [load_model(p) for p in paths]
    if len(models) == 1:
        return models[0]
    first = models[0]
    keys = ("name", "weights", "input_size", "grid_size")
    for path, m in zip(paths[1:], models[1:], strict=True):
        if m.vocab != first.vocab:
            raise file_error(path, f"cannot join an ensemble with {paths[0]}: different vocabularies")
        if any(m.encoder.get(k) != first.encoder.get(k) for k in keys):
            raise file_error(path, f"cannot join an ensemble with {paths[0]}: features of another encoder")
    if any(m.encoder_state is not None for m in models):
        raise file_error(paths[0], "models with fine-tuned encoders cannot be ensembled")
    return CaptionModel(EnsembleDecoder([m.decoder for m in models]).eval(), first.vocab, first.config,
                        first.encoder, {"ensemble": [str(p) for p in paths]})
