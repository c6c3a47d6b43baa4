"""Model files: state_dict + vocab + config + encoder description, never pickled modules.

This module is the file format only: :func:`save_model`, :func:`load_model` / :func:`load_models` and the int8
storage of weights. The model in memory is :class:`captioner.model.CaptionModel`.

Everything in a model file is tensors, numbers, strings, lists and dicts, so it loads with
``torch.load(weights_only=True)``: a tampered or foreign file is rejected instead of executed. The vocab
travels inside the model, so a model can never be paired with the wrong word list.
"""

import json
import lzma
import pickle
from pathlib import Path

import torch

from captioner.config import Config
from captioner.data.vocab import Vocab
from captioner.decoders import build_decoder
from captioner.errors import file_error
from captioner.io import torch_save_atomic
from captioner.model import CaptionModel, check_one_encoder, join

MODEL_FORMAT = "captioner-model/1"  # one decoder, float weights
# read only: /1 with the encoder's weight tensors in int8 (written by earlier versions)
MODEL_FORMAT_INT8 = "captioner-model/1+int8-encoder"
# several decoders (a test-time ensemble in one file) and/or weight tensors in int8: a version that cannot
# read these refuses the file instead of loading integers as weights or only the first decoder
MODEL_FORMAT_2 = "captioner-model/2"


def save_model(path: str | Path, model: CaptionModel, half: bool = False, int8_encoder: bool = False,
               int8_decoder: bool = False) -> Path:
    """Write ``model``; ``half``: floats in float16; ``int8_encoder`` / ``int8_decoder``: the carried encoder's
    or the decoder's weight matrices and convolutions in int8 (one scale per output channel), about a quarter
    of their float32 size. An ensemble (:func:`load_models`) is written as one file with all its decoders."""
    check_one_encoder(model, path)
    if int8_encoder and model.encoder_state is None:
        raise file_error(path, "int8 encoder storage needs a model that carries its encoder's weights")
    decoders = []
    for decoder, config in model.parts():
        state, scales = _cast({k: v.detach().cpu() for k, v in decoder.state_dict().items()}, half), None
        if int8_decoder:
            state, scales = quantize_int8(state)
        decoders.append({"config": config.to_dict(), "state_dict": state,
                         **({"int8_scales": scales} if scales else {})})
    encoder_state, encoder_scales = _cast(model.encoder_state, half), None
    if int8_encoder:
        encoder_state, encoder_scales = quantize_int8(encoder_state)
    common = {
        "config": model.config.to_dict(),
        "vocab": model.vocab.to_dict(),
        "encoder": dict(model.encoder),
        "global_dim": int(model.encoder["global_dim"]),
        "grid_dim": int(model.encoder["grid_dim"]),
        "metrics": dict(model.metrics),
        "encoder_state_dict": encoder_state,
        **({"encoder_int8_scales": encoder_scales} if int8_encoder else {}),
        **({"consensus": pack_consensus(model.consensus_index)} if model.consensus_index else {}),
    }
    plain = len(decoders) == 1 and not (int8_encoder or int8_decoder or model.consensus_index)
    if plain:  # the layout every version reads
        return torch_save_atomic(path, {"format": MODEL_FORMAT, **common, "state_dict": decoders[0]["state_dict"]})
    return torch_save_atomic(path, {"format": MODEL_FORMAT_2, **common, "decoders": decoders})


def quantize_int8(state: dict) -> tuple[dict, dict]:
    """Weight tensors of 2 or more dimensions (convolutions, linear layers) -> int8, symmetric, one float32
    scale per output channel (dim 0); other entries (biases, batch-norm) unchanged. Returns (state, scales).

    Convolutions whose filters read at most 3 input channels (depthwise ones, and a stem reading the RGB image)
    are left as they are: few weights, and the ones int8 rounding hurts (the shipped ensemble's val CIDEr-D:
    55.6 with a float16 encoder, 55.0 with every convolution in int8, 55.4 with these kept; docs/history/results-log.md)."""
    out, scales = dict(state), {}
    for k, v in state.items():
        if v.is_floating_point() and v.dim() >= 2 and not (v.dim() == 4 and v.shape[1] <= 3):
            w = v.float()
            scale = w.abs().amax(dim=tuple(range(1, w.dim())), keepdim=True).clamp_min(1e-12) / 127  # [C, 1, ..]
            out[k] = torch.round(w / scale).clamp(-127, 127).to(torch.int8)
            scales[k] = scale.flatten()  # [C]
    return out, scales


def pack_consensus(index: dict) -> dict:
    """A consensus index as stored: each image's global feature as a unit vector in int8 (one scale per row;
    reranking compares directions only), the captions as LZMA-compressed JSON in a uint8 tensor (plain tensors
    load with ``weights_only``)."""
    unit = torch.nn.functional.normalize(index["features"].float(), dim=1)  # [N, D]
    scales = unit.abs().amax(dim=1).clamp_min(1e-12) / 127  # [N]
    text = lzma.compress(json.dumps([[" ".join(c) for c in caps] for caps in index["captions"]]).encode())
    return {"features": torch.round(unit / scales[:, None]).to(torch.int8), "scales": scales,
            "captions": torch.frombuffer(bytearray(text), dtype=torch.uint8), "source": str(index.get("source", ""))}


def unpack_consensus(stored: dict, path: Path) -> dict:
    """:func:`pack_consensus` undone: {"features": [N, D] float32, "captions": [N][captions][words], "source"}."""
    try:
        features = stored["features"].float() * stored["scales"].float()[:, None]
        captions = json.loads(lzma.decompress(stored["captions"].numpy().tobytes()))
    except (KeyError, TypeError, AttributeError, ValueError, lzma.LZMAError) as e:
        raise file_error(path, f"its consensus index is damaged ({str(e).splitlines()[0][:120]})") from None
    if len(captions) != features.size(0):
        raise file_error(path, f"its consensus index has {features.size(0)} images but {len(captions)} caption lists")
    return {"features": features, "captions": [[c.split() for c in caps] for caps in captions],
            "source": stored.get("source", "")}


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
    """Load a model file written by :func:`save_model` (one decoder or an ensemble's several), or a Lightning
    checkpoint of a training run."""
    path = Path(path)
    obj = _read(path)
    fmt = obj.get("format")
    if fmt in (MODEL_FORMAT, MODEL_FORMAT_INT8, MODEL_FORMAT_2):
        hp, metrics, encoder_state = obj, obj.get("metrics", {}), obj.get("encoder_state_dict")
        entries = obj.get("decoders") if fmt == MODEL_FORMAT_2 else \
            [{"config": obj.get("config"), "state_dict": obj.get("state_dict")}]
        if not entries:
            raise file_error(path, "model file holds no decoder")
        if "encoder_int8_scales" in obj:
            encoder_state = dequantize_int8(encoder_state, obj["encoder_int8_scales"])
    elif isinstance(fmt, str) and fmt.startswith("captioner-model/"):
        raise file_error(path, f"written in a newer model format ({fmt}) than this captioner reads; upgrade it")
    elif "hyper_parameters" in obj and "state_dict" in obj:  # Lightning checkpoint (best.ckpt / last.ckpt)
        hp = obj["hyper_parameters"]
        entries = [{"config": hp.get("config"), "state_dict": {
            k.removeprefix("decoder."): v for k, v in obj["state_dict"].items() if k.startswith("decoder.")}}]
        encoder_state = {k.removeprefix("encoder."): v for k, v in obj["state_dict"].items()
                         if k.startswith("encoder.")} or None
        metrics = {}
    else:
        raise file_error(path, "not a captioner model file (no 'format' or Lightning hyper_parameters)")
    try:
        config = Config.from_saved(hp["config"], source=str(path))
        vocab = Vocab.from_dict(hp["vocab"])
        configs, decoders = [], []
        for entry in entries:
            member = Config.from_saved(entry["config"], source=str(path))
            state = entry["state_dict"]
            if "int8_scales" in entry:
                state = dequantize_int8(state, entry["int8_scales"])
            decoder = build_decoder(member.model, len(vocab), int(hp["global_dim"]), int(hp["grid_dim"]))
            decoder.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
            configs.append(member)
            decoders.append(decoder.eval())
    except (KeyError, TypeError, RuntimeError) as e:
        raise file_error(path, f"model file does not match its config ({str(e).splitlines()[0][:160]})") from None
    encoder = hp.get("encoder") or {"name": config.encoder.name, "weights": config.encoder.weights,
                                   "global_dim": hp["global_dim"], "grid_dim": hp["grid_dim"]}
    if encoder_state is not None:
        encoder_state = {k: v.float() if v.is_floating_point() else v for k, v in encoder_state.items()}
    index = unpack_consensus(obj["consensus"], path) if "consensus" in obj else None
    if len(decoders) == 1:
        return CaptionModel(decoders[0], vocab, config, dict(encoder), dict(metrics), encoder_state,
                            consensus_index=index)
    from captioner.decoders.ensemble import EnsembleDecoder

    ensemble = EnsembleDecoder(decoders, mean=config.decode.ensemble_mean).eval()
    return CaptionModel(ensemble, vocab, config, dict(encoder), dict(metrics), encoder_state, configs,
                        consensus_index=index)


def load_models(paths: list[str | Path]) -> CaptionModel:
    """One model file, or several decoding as one test-time ensemble (:func:`captioner.model.join`: shared
    vocabulary, the first file's decoding settings, across encoders when their features differ)."""
    return join([load_model(p) for p in paths], [str(p) for p in paths])
