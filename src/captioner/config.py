"""Experiment configuration: YAML files (those shipped in ``captioner/configs``, or any path) loaded into small
dataclasses. docs/configuration.md, which tools/config_reference.py writes from this file, lists every key.

A config names a model, an encoder, data options, training and decoding settings. It is passed explicitly
to whatever needs it (no global config), stored inside every checkpoint, and written next to every run.
"""

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from captioner.errors import CaptionerError, file_error

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass
class ModelConfig:
    """The caption decoder: its kind, sizes and training terms (fixed once a model is trained, but for
    ``hard_inference``)."""

    # nic (Show and Tell) | soft | hard (Show, Attend and Tell) | uniform (soft attention with equal weights: the
    # attention ablation) | updown (Up-Down top-down attention, Anderson et al. 2018) | spatial | adaptive
    # (attention from the current LSTM state, without and with a visual sentinel: Lu et al. 2017) |
    # transformer (masked self-attention and cross-attention over the grid)
    type: str = "soft"
    embed_dim: int = 512  # size of the word embedding (with glove: the vectors' size)
    hidden_dim: int = 512  # size of the LSTM state (both LSTMs of updown)
    attention_dim: int = 512  # size of the attention network's hidden layer (all but nic and transformer)
    dropout: float = 0.5  # dropout probability inside the decoder (training only)
    # weight of Xu et al.'s doubly stochastic attention regularisation: over a caption, every grid cell should
    # get about as much attention in total (soft, hard)
    alpha_c: float = 1.0
    # attention models' output layer: true = Xu et al.'s deep output L_o tanh(E y + L_h h + L_z z) (eq. 7);
    # false = L_o h, the plain layer of the common tutorial code
    deep_output: bool = True
    # hard attention (Xu et al. 2015, section 4.1): lambda_r, the weight of the score-function (REINFORCE) term
    reinforce_weight: float = 1.0
    entropy_weight: float = 0.002  # hard attention: lambda_e, the weight of the attention entropy bonus
    # hard attention: the REINFORCE baseline is a moving average, b <- decay * b + (1 - decay) * reward
    baseline_decay: float = 0.9
    # hard attention's REINFORCE reward: word = log p(y|s,a) per word, as Xu et al.'s released code computes it
    # (length-independent; better on Flickr8k: docs/results.md); caption = the whole caption's log p(y|s,a) (eq. 11)
    reinforce_reward: str = "word"
    # hard attention, training: the fraction of captions that use the expected (soft) context instead of
    # sampled locations
    expected_context_prob: float = 0.5
    # hard attention's context when decoding: expected (the attention-weighted mean of the grid, as Xu et al.'s
    # released code decodes; better on Flickr8k: docs/results.md), argmax (the most likely cell) or sample
    hard_inference: str = "expected"
    # word vectors in GloVe text format to start the embedding from (their size must equal embed_dim)
    glove: str | None = None
    freeze_embeddings: bool = False  # keep the word embedding fixed in training (e.g. GloVe vectors as they are)
    num_layers: int = 3  # transformer: decoder layers
    num_heads: int = 8  # transformer: attention heads (hidden_dim must be a multiple of it)
    ffn_dim: int = 2048  # transformer: the feed-forward layer's inner size
    positions: str = "sinusoidal"  # transformer: word positions, sinusoidal | learned
    # adaptive attention: how closed the visual sentinel starts: its score starts this many nats below the grid
    # cells' (0: level; at most |w_h|_1, about sqrt(attention_dim) / 2); docs/training.md
    sentinel_start: float = 5.0


@dataclass
class EncoderConfig:
    """The image encoder (a CNN pretrained on ImageNet) whose features the decoder reads."""

    # efficientnet_lite0 | efficientnet_lite1 | efficientnet_lite2 | mobilenet_v2 | resnet101 | vgg19 | tiny
    # (a small untrained network for tests and the synthetic dataset)
    name: str = "efficientnet_lite0"
    weights: str = "imagenet"  # imagenet | none (random) | path to a local state_dict file
    input_size: int | None = None  # side of the square input image in pixels (null: the encoder's default)
    # side of the feature grid: the feature map is average-pooled down to it (null: the encoder's own grid)
    grid_size: int | None = None
    layer: str | None = None  # an earlier feature layer, where the encoder offers one (mobilenet_v2: features14)
    finetune: bool = False  # compute the features in the training loop and train the encoder too (GPU advised)
    lr: float = 1.0e-4  # the encoder's learning rate when finetune is on
    finetune_blocks: int | None = None  # fine-tune only the encoder's last N blocks (null: all of it)


@dataclass
class DataConfig:
    """How the training captions become token sequences."""

    min_word_freq: int = 5  # words seen fewer times in the training captions become <unk>
    max_caption_len: int = 50  # longer training captions are cut to this many words (the <end> token is kept)


@dataclass
class TrainConfig:
    """Training: optimisation, model selection on decoded validation captions, hardware, and the optional
    techniques (scheduled sampling, label smoothing, mirrored images, SCST)."""

    batch_size: int = 32  # captions per step (with several processes: the total across them)
    lr: float = 4.0e-4  # the decoder's learning rate (Adam)
    weight_decay: float = 0.0  # Adam's L2 weight decay
    max_epochs: int = 20  # most epochs to train
    max_time: str | None = None  # wall-clock limit on fitting, "DD:HH:MM:SS"; the best epoch so far is exported
    grad_clip: float = 5.0  # clip the gradient norm to this (0: no clipping)
    # multiply the learning rate by this after lr_patience epochs without a better monitored metric
    lr_factor: float = 0.8
    lr_patience: int = 2  # epochs without a better monitored metric before the learning rate drops
    # the learning rate rises linearly from 0 over the first warmup_steps steps (0: none; transformers want it)
    warmup_steps: int = 0
    early_stop_patience: int = 5  # stop after this many epochs without a better monitored metric
    # the decoded validation metric that picks the best epoch and drives the LR drops and early stopping:
    # bleu4 | cider (CIDEr-D)
    monitor: str = "bleu4"
    val_beam_size: int = 3  # beam size of the decoded validation after every epoch
    val_max_len: int = 30  # longest validation caption in words
    val_images: int | None = None  # score only the first N val images (null: all)
    seed: int = 0  # random seed (initial weights, batch order, sampling)
    precision: str = "auto"  # auto (bf16/16-mixed on CUDA, 32 on CPU) | 32 | 16-mixed | bf16-mixed
    accelerator: str = "auto"  # Lightning's accelerator: auto (a GPU when torch sees one) | cpu | gpu
    devices: str | int = "auto"  # processes per machine; more than 1 trains with DDP (batch_size is the total)
    num_nodes: int = 1  # machines (torchrun / SLURM set both themselves)
    num_workers: int = 0  # data-loader worker processes (0: load batches in the training process)
    # deterministic algorithms, for repeatable runs (on a GPU: only a warning for an operation that has none)
    deterministic: bool = True
    bucket_by_length: bool = True  # batch captions of similar length together (less padding, faster)
    label_smoothing: float = 0.0  # e.g. 0.1: the target keeps 0.9 of its weight, the rest spread over the vocab
    # data augmentation: each training caption reads its image mirrored (left-right) with probability 0.5, from
    # the cached features of the mirrored training images (cross-entropy training; SCST reads the plain images)
    flip: bool = False
    # scheduled sampling: the highest probability of feeding the model its own sampled word instead of the
    # reference word (0: off); it rises linearly from 0 at epoch ss_start to ss_max over ss_ramp epochs
    ss_max: float = 0.0
    ss_start: int = 0  # scheduled sampling: the first epoch (counting from 0) that feeds sampled words
    ss_ramp: int = 5  # scheduled sampling: epochs until the probability reaches ss_max
    # sequence-level knowledge distillation (Kim & Rush 2016): a teacher's captions of the training images (a
    # JSONL file from recipes/teacher_captions.py) train the model beside the human captions
    distill: str | None = None
    distill_weight: float = 1.0  # distillation: the weight of a teacher caption's words against a human caption's
    # word-level distillation: the weight of a cross-entropy term against the teacher's stored top-k next-word
    # probabilities along its captions (0: off; needs a teacher file written with --topk)
    distill_topk: float = 0.0
    init_from: str | None = None  # a model.pt to start from (its vocabulary too): e.g. SCST after cross-entropy
    # self-critical sequence training (Rennie et al. 2017): reward = CIDEr-D of sampled captions against the
    # image's training references, baseline = the greedy caption's reward or the mean of the other samples
    scst: bool = False
    scst_samples: int = 5  # SCST: captions sampled per image
    scst_baseline: str = "greedy"  # SCST baseline: greedy | mean (of the image's other samples; needs 2 samples)
    scst_max_len: int = 16  # SCST: longest sampled (and greedy) caption in words
    # SCST samples in train mode (dropout on; hard attention samples its locations too), as the usual SCST
    # code; false: with the test-time network
    scst_dropout: bool = True
    scst_bleu_weight: float = 0.0  # > 0: reward = CIDEr-D + this x sentence BLEU-4 (coco-caption's per image)


@dataclass
class DecodeConfig:
    """How a trained model captions (evaluate, caption, serve). Stored in every model file: ``--set
    decode.KEY=VALUE`` changes a setting for one run, ``export --set`` stores it anew, and ``--beam-size`` /
    ``--max-len`` override beam_size / max_len."""

    beam_size: int = 5  # beam width (1: greedy decoding)
    max_len: int = 30  # longest caption in words
    length_penalty: float = 0.0  # 0: plain sum of log-probs; 1: mean log-prob per word
    ban_unk: bool = True  # never output <unk> (a caption for people, not a placeholder)
    block_ngram: int = 0  # n > 1: a caption never repeats an n-gram (3 stops "a man in a man in a ...")
    repetition_penalty: float = 0.0  # nats off a word's log-probability per earlier use in the caption
    # consensus reranking: choose among the beams by score + consensus_weight x CIDEr-D against the captions of
    # the nearest training images; needs the training split (evaluate --data, caption/serve --consensus DATA) or a
    # model file that carries it (export --consensus DATA)
    consensus: bool = False
    consensus_k: int = 30  # consensus reranking: how many nearest training images' captions to compare with
    consensus_weight: float = 0.3  # consensus reranking: the weight of the CIDEr-D agreement in a beam's score
    mbr_weight: float = 0.0  # with consensus: + this x the beam's expected CIDEr-D against the image's other beams
    # an ensemble's word distribution: the mean of its members' probabilities (prob), or the normalised mean of
    # their log-probabilities (logprob: a product of experts, which a word needs every member to back)
    ensemble_mean: str = "prob"
    # test-time augmentation: every decoder also reads the features of the mirrored image (left-right flip), the
    # two views decoding as one ensemble (as ensemble_mean says); not in the validation during training
    flip: bool = False

    def banned(self, vocab) -> tuple[int, ...]:
        return (vocab.unk_id,) if self.ban_unk else ()

    def search_options(self, vocab) -> dict:
        """The beam-search keyword arguments these settings give (besides beam size and length)."""
        return dict(length_penalty=self.length_penalty, banned=self.banned(vocab), block_ngram=self.block_ngram,
                    repetition_penalty=self.repetition_penalty)


# Settings added with a default other than the behaviour before them: a saved config (a run's config.yaml, a
# model file) that lacks one was trained with this older value, and keeps it
MODEL_TYPES = ("nic", "soft", "hard", "uniform", "updown", "spatial", "adaptive", "transformer")
LEGACY = {"model": {"reinforce_reward": "caption", "hard_inference": "argmax"}}


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "Config":
        parts = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = set(d) - set(parts)
        if unknown:
            raise file_error(source, f"unknown section(s) {sorted(unknown)}; expected {sorted(parts)}")
        kwargs = {}
        for f in dataclasses.fields(cls):
            section_cls = f.default_factory  # type: ignore[misc]
            values = d.get(f.name) or {}
            if not isinstance(values, dict):
                raise file_error(source, f"section '{f.name}' must be a mapping")
            known = {g.name for g in dataclasses.fields(section_cls)}
            bad = set(values) - known
            if bad:
                raise file_error(source, f"unknown key(s) {sorted(bad)} in '{f.name}'; known: {sorted(known)}")
            types = {g.name: g.type.__name__ if isinstance(g.type, type) else str(g.type)
                     for g in dataclasses.fields(section_cls)}  # "float", "int | None", ...
            kwargs[f.name] = section_cls(**{k: _coerce(v, types[k], f"{f.name}.{k}", source)
                                            for k, v in values.items()})
        cfg = cls(**kwargs)
        cfg.validate(source)
        return cfg

    @classmethod
    def from_saved(cls, d: dict, source: str = "config") -> "Config":
        """A config that a run saved (its config.yaml): a key it lacks was added after the run began, and takes
        the value that the version which wrote it used (LEGACY), not today's default."""
        d = dict(d)
        for section, keys in LEGACY.items():
            values = d.get(section) or {}
            if isinstance(values, dict):  # (anything else: from_dict names the problem)
                d[section] = {**keys, **values}
        return cls.from_dict(d, source)

    def validate(self, source: str = "config") -> None:
        if self.model.type not in MODEL_TYPES:
            raise file_error(source, f"model.type must be one of {', '.join(MODEL_TYPES)}, not {self.model.type!r}")
        if self.model.positions not in ("sinusoidal", "learned"):
            raise file_error(source, f"model.positions must be sinusoidal or learned, not {self.model.positions!r}")
        if self.model.type == "transformer" and (self.model.num_heads < 1 or self.model.hidden_dim % self.model.num_heads):
            raise file_error(source, f"model.hidden_dim ({self.model.hidden_dim}) must be a multiple of "
                                     f"model.num_heads ({self.model.num_heads})")
        if self.train.warmup_steps < 0:
            raise file_error(source, "train.warmup_steps must not be negative")
        if self.train.distill_weight < 0 or self.train.distill_topk < 0:
            raise file_error(source, "train.distill_weight and train.distill_topk must not be negative")
        if self.train.monitor not in ("bleu4", "cider"):
            raise file_error(source, f"train.monitor must be bleu4 or cider, not {self.train.monitor!r}")
        if self.model.reinforce_reward not in ("caption", "word"):
            raise file_error(source, "model.reinforce_reward must be caption or word")
        if self.model.hard_inference not in ("argmax", "expected", "sample"):
            raise file_error(source, "model.hard_inference must be argmax, expected or sample")
        if self.train.scst_baseline not in ("greedy", "mean") or (
                self.train.scst_baseline == "mean" and self.train.scst_samples < 2):
            raise file_error(source, "train.scst_baseline must be greedy, or mean with scst_samples >= 2")
        if self.decode.consensus_k < 1 or self.decode.consensus_weight < 0 or self.decode.mbr_weight < 0:
            raise file_error(source, "decode.consensus_k must be >= 1, decode.consensus_weight and "
                             "decode.mbr_weight >= 0")
        if self.decode.ensemble_mean not in ("prob", "logprob"):
            raise file_error(source, "decode.ensemble_mean must be prob or logprob, "
                             f"not {self.decode.ensemble_mean!r}")
        if self.train.flip and self.encoder.finetune:
            raise file_error(source, "train.flip reads cached features of the mirrored images: not with "
                             "encoder.finetune")
        if self.decode.beam_size < 1 or self.decode.max_len < 1:
            raise file_error(source, "decode.beam_size and decode.max_len must be >= 1")
        if self.train.scst_bleu_weight < 0:
            raise file_error(source, "train.scst_bleu_weight must be >= 0")
        if self.train.max_time is not None and not re.fullmatch(r"\d+:\d\d:\d\d:\d\d", str(self.train.max_time)):
            raise file_error(source, "train.max_time must be DD:HH:MM:SS (e.g. 00:08:00:00), "
                             f"not {self.train.max_time!r}")
        if not 0 <= self.train.label_smoothing < 1 or not 0 <= self.train.ss_max <= 1:
            raise file_error(source, "train.label_smoothing must be in [0, 1) and train.ss_max in [0, 1]")


def available_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A YAML path, or the name of a config shipped in ``captioner/configs`` (e.g. ``soft_lite0``)."""
    path = Path(name_or_path)
    shipped = CONFIG_DIR / f"{name_or_path}.yaml"
    if path.suffix not in (".yaml", ".yml") and not path.is_file() and shipped.is_file():
        return shipped  # a name; a folder of that name (e.g. a run called soft_lite0) does not hide it
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise file_error(path, "no such config file")
        return path
    raise CaptionerError(f"{name_or_path}: no such config file or shipped config ({', '.join(available_configs())})")


def _coerce(value, type_name: str, key: str, source: str):
    """A config value as its field's type says (YAML reads ``5e-4`` as a string); a clear error if it cannot be."""
    kinds = {t.strip() for t in type_name.split("|")}
    if value is None and "None" in kinds:
        return None
    if isinstance(value, bool):
        if "bool" in kinds:
            return value
    elif "int" in kinds and isinstance(value, int):
        return value
    elif "float" in kinds and isinstance(value, int | float | str):
        try:
            return float(value)
        except ValueError:
            pass
    elif "int" in kinds and isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    if "str" in kinds and isinstance(value, str):
        return value
    expected = " or ".join(sorted(k.replace("None", "null") for k in kinds))
    raise file_error(source, f"{key} must be {expected}, not {value!r}")


# model settings that only change how a trained model decodes (so --set may change them after training)
DECODE_TIME = ("model.hard_inference",)


def with_decode_settings(cfg: Config, overrides: list[str]) -> Config:
    """``cfg`` with ``decode.key=value`` (and DECODE_TIME) overrides: how a trained model decodes; nothing else
    may change."""
    raw = cfg.to_dict()
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not name or not (section == "decode" or key in DECODE_TIME):
            raise CaptionerError(f"--set {item!r}: only decode.KEY=VALUE settings (and {', '.join(DECODE_TIME)}) "
                                 "apply to a trained model, e.g. decode.block_ngram=3")
        raw[section][name] = yaml.safe_load(value)
    return Config.from_dict(raw, source="--set")


def load_config(name_or_path: str | Path, overrides: list[str] | None = None) -> Config:
    """Load a YAML config; ``overrides`` are ``section.key=value`` strings (value parsed as YAML)."""
    path = resolve_config_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise file_error(path, f"malformed YAML: {str(e).splitlines()[0]}") from None
    except UnicodeDecodeError:
        raise file_error(path, "not UTF-8 text") from None
    if not isinstance(raw, dict):
        raise file_error(path, "a config must be a mapping of sections")
    for item in overrides or []:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot:
            raise CaptionerError(f"--set {item!r}: expected section.key=value, e.g. train.max_epochs=3")
        raw.setdefault(section, {})[name] = yaml.safe_load(value)
    return Config.from_dict(raw, source=str(path))
