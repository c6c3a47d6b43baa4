"""The public entry points: :func:`load` a model to caption with, :func:`evaluate` one on a dataset, :func:`train`
one from a config. The ``captioner`` command does the same through these."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from captioner.captioning import Captioner, settings_overrides
from captioner.errors import CaptionerError

SHIPPED = "shipped"  # the name of the model that comes with the package
ModelSpec = str | Path | Sequence[str | Path] | None


def load(model: ModelSpec = None, *, device: str = "auto", backend: str = "auto",
         consensus: str | Path | bool | None = None, member: int | None = None, **settings) -> Captioner:
    """A :class:`~captioner.captioning.Captioner` for a model, ready to caption images.

    Args:
        model: None or ``"shipped"`` for the model that comes with captioner (a Flickr8k soft-attention model,
            works offline); a model file (a run's ``model.pt``, a Lightning checkpoint, an exported file); or
            several files, which caption as one ensemble (their word distributions averaged at every step of
            one beam search; files on different encoders each read their own encoder's features).
        device: ``"auto"`` (a GPU when torch sees one, else the CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        backend: what runs the encoder: ``"torch"``; ``"onnx"``, ONNX Runtime on the CPU (the encoder exported
            once into the cache; several times faster on a CPU, same captions); ``"auto"``: onnx on a CPU where
            onnxruntime is installed, else torch.
        consensus: a dataset (any layout ``captioner train --data`` reads) whose training captions rerank the
            final beams (consensus reranking; the training images' features are computed once and cached);
            ``True``: rerank with the index the model file carries (``captioner export --consensus DATA``; a
            file that carries one reranks by default); ``False``: do not rerank.
        member: caption with the Nth decoder of an ensemble alone (counting from 1).
        **settings: decoding settings stored as its defaults for every call: ``beam_size``, ``max_len``,
            ``length_penalty``, ``block_ngram``, ``repetition_penalty``, ``ban_unk``, ``hard_inference``
            (``"expected"``, ``"argmax"`` or ``"sample"``), ``flip`` (test-time flip), ``ensemble_mean``
            (``"prob"`` or ``"logprob"``), ``consensus_weight``, ``consensus_k``, ``mbr_weight``. A call can
            change any of them for itself: ``cap(image, beam_size=3)``.

    Returns:
        A Captioner: ``cap(image)`` gives a :class:`~captioner.captioning.Caption` (``.text``, ``.tokens``,
        ``.score``, ``.attention``), ``cap([a, b, ...])`` a list of them.

    Example:
        >>> import captioner
        >>> cap = captioner.load()
        >>> print(cap("photo.jpg").text)
    """
    from captioner.checkpoint import default_model_path, load_models
    from captioner.devices import pick_device
    from captioner.model import pick_backend, with_settings

    overrides = settings_overrides(settings)  # (unknown names refused before anything loads)
    paths = _model_paths(model, default_model_path)
    loaded = load_models(paths)
    if member:
        loaded = loaded.member(member)
    where = pick_device(device)
    loaded = loaded.to(where)
    if overrides:
        loaded = with_settings(loaded, overrides)
    return Captioner(loaded, _reranker(loaded, consensus), backend=pick_backend(backend, where))


def _reranker(model, consensus: str | Path | bool | None):
    """The consensus reranker ``load(consensus=...)`` asks for: over a dataset's training split; over the index
    the model file carries (whether or not it reranks by default: a call may switch it on); none (False)."""
    from captioner.model import with_settings
    from captioner.model_features import consensus_reranker

    if consensus is False:
        with_settings(model, ["decode.consensus=false"])
        return None
    if isinstance(consensus, str | Path):
        with_settings(model, ["decode.consensus=true"])
        return consensus_reranker(model, consensus, progress=False)
    if consensus is True:
        with_settings(model, ["decode.consensus=true"])
    if model.consensus_index is not None or model.config.decode.consensus:
        return consensus_reranker(model)  # (no index and no data: a one-line error)
    return None


def _model_paths(model: ModelSpec, default) -> list[Path]:
    if model is None or (isinstance(model, str) and model == SHIPPED):
        return [default()]
    if isinstance(model, str | Path):
        return [Path(model)]
    paths = [Path(p) for p in model]
    if not paths:
        raise CaptionerError("no model file given")
    return [default() if str(p) == SHIPPED else p for p in paths]


def evaluate(model: ModelSpec | Captioner = None, data: str | Path = "", split: str = "val", *,
             out: str | Path | None = None, report: str | Path | None = None, limit: int | None = None,
             meteor: bool = True, tokenizer: str = "auto", cache: str | Path | None = None,
             device: str = "auto", progress: bool = False, **settings) -> dict:
    """Caption every image of a dataset's split and score the captions as coco-caption does.

    Args:
        model: a :class:`~captioner.captioning.Captioner`, or what :func:`load` takes (None: the shipped model).
        data: the dataset (any layout ``captioner train --data`` reads).
        split: ``"val"``, ``"test"`` or ``"train"``.
        out: a JSON file for the report (metrics, every image's caption, references and scores).
        report: a folder for the HTML gallery of the split (``report/index.html``).
        limit: score only the first N images of the split.
        meteor: False skips METEOR (the slowest metric; it needs Java).
        tokenizer: ``"auto"`` (coco-caption's PTB tokenizer when Java is there), ``"ptb"`` or ``"python"``.
        cache: the feature cache root (default ``$CAPTIONER_CACHE``).
        device, **settings: as for :func:`load` (settings apply to this evaluation).

    Returns:
        The report: ``{"metrics": {"BLEU-1": .., ..., "CIDEr-D": ..}, "images": N, "captions": [...], ...}``,
        scores as fractions (×100 for the usual tables).
    """
    metrics = ("bleu", "meteor", "rouge", "cider") if meteor else ("bleu", "rouge", "cider")
    if isinstance(model, Captioner):
        cap = model
    else:
        decode = {k: settings.pop(k) for k in list(settings) if k != "consensus"}
        cap = load(model, device=device, **decode)
    return cap.evaluate(data, split, cache_root=cache, out=out, tokenizer=tokenizer, metrics=metrics, limit=limit,
                        progress=progress, report_dir=report, **settings)


def train(config: str | Path, data: str | Path, out: str | Path | None = None, *,
          overrides: Sequence[str] | dict | None = None, resume: bool = False, cache: str | Path | None = None,
          progress: bool = True) -> Path:
    """Train a model, as ``captioner train`` does, and return its run folder (``model.pt`` inside).

    Args:
        config: a shipped config's name (``"soft_lite0"``, ``"soft_resnet101"``, ...) or a YAML file.
        data: the dataset (Flickr8k as distributed, Karpathy's JSON, ...: see docs/training.md).
        out: the run folder (default ``runs/CONFIG_NAME``).
        overrides: config changes, as ``["train.max_epochs=3"]`` or ``{"train.max_epochs": 3}``.
        resume: go on from the run folder's last checkpoint.
        cache: the feature cache root (default ``$CAPTIONER_CACHE``).
    """
    from captioner.config import load_config, resolve_config_path
    from captioner.training.train import train as fit

    if isinstance(overrides, dict):
        overrides = [f"{k}={v}" for k, v in overrides.items()]
    cfg = load_config(config, list(overrides or []))
    run = Path(out) if out is not None else Path("runs") / resolve_config_path(config).stem
    fit(cfg, data, run, cache_root=cache, resume=resume, progress=progress)
    return run
