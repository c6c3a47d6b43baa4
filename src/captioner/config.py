"""Experiment configuration: YAML files in ``configs/`` loaded into small dataclasses.

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
    type: str = "soft"  # nic | soft | hard | uniform (mean-pooled context: the attention ablation) | updown
    embed_dim: int = 512
    hidden_dim: int = 512
    attention_dim: int = 512
    dropout: float = 0.5
    alpha_c: float = 1.0  # doubly stochastic attention regularisation (soft, hard)
    # attention models' output layer: true = Xu et al.'s deep output L_o tanh(E y + L_h h + L_z z) (eq. 7);
    # false = L_o h, the plain layer of the common tutorial code
    deep_output: bool = True
    # hard attention (Xu et al. 2015, section 4.1)
    reinforce_weight: float = 1.0  # lambda_r: weight of the score-function (REINFORCE) term
    entropy_weight: float = 0.002  # lambda_e: weight of the attention entropy bonus
    baseline_decay: float = 0.9  # moving-average baseline b <- decay * b + (1 - decay) * log p(y|s)
    # REINFORCE reward: word = log p(y|s,a) per word, as Xu et al.'s released code computes it (arctic-captions,
    # RL_sumCost): it does not grow with caption length, so a moving-average baseline over batches of different
    # lengths stays comparable; caption = the whole caption's log p(y|s,a) (the paper's eq. 11). On Flickr8k
    # "word" was ahead on val CIDEr-D in 9 of 10 epochs and ended >= on every metric (docs/RESULTS.md)
    reinforce_reward: str = "word"
    expected_context_prob: float = 0.5  # use the expected (soft) context for this fraction of captions
    # hard attention's context at decoding time: expected (the alpha-weighted mean of the grid, what Xu et al.'s
    # released generate_caps.py decodes with unless -sampling is given), argmax (the most likely cell: the
    # default before 2026-11-27) or sample. On Flickr8k val all 7 hard models scored higher with "expected"
    # (BLEU-4 +0.4 to +1.5, CIDEr-D +1.5 to +4.0; docs/RESULTS.md). Per run: --set model.hard_inference=argmax
    hard_inference: str = "expected"
    glove: str | None = None  # word vectors in GloVe text format to start the embedding from (dims = embed_dim)
    freeze_embeddings: bool = False  # keep the word embedding fixed (e.g. GloVe vectors as they are)


@dataclass
class EncoderConfig:
    name: str = "efficientnet_lite0"
    weights: str = "imagenet"  # imagenet | none | path to a local state_dict file
    input_size: int | None = None  # None: the encoder's default
    grid_size: int | None = None  # None: the encoder's natural grid
    layer: str | None = None  # encoder-specific alternative feature layer
    finetune: bool = False  # compute features in the training loop and train the encoder too
    lr: float = 1.0e-4  # encoder learning rate when finetune is on
    finetune_blocks: int | None = None  # fine-tune only the encoder's last N blocks (None: all of it)


@dataclass
class DataConfig:
    min_word_freq: int = 5
    max_caption_len: int = 50  # longer training captions are cut (the <end> token is kept)


@dataclass
class TrainConfig:
    batch_size: int = 32
    lr: float = 4.0e-4
    weight_decay: float = 0.0
    max_epochs: int = 20
    max_time: str | None = None  # wall-clock limit on fitting, "DD:HH:MM:SS"; the best epoch so far is exported
    grad_clip: float = 5.0
    lr_factor: float = 0.8  # multiply the LR by this when the monitored metric stalls
    lr_patience: int = 2
    early_stop_patience: int = 5
    monitor: str = "bleu4"  # decoded validation metric: bleu4 | cider
    val_beam_size: int = 3
    val_max_len: int = 30
    val_images: int | None = None  # score only the first N val images (None: all)
    seed: int = 0
    precision: str = "auto"  # auto (bf16/16-mixed on CUDA, 32 on CPU) | 32 | 16-mixed | bf16-mixed
    accelerator: str = "auto"
    devices: str | int = "auto"  # processes per machine; more than 1 trains with DDP (batch_size is the total)
    num_nodes: int = 1  # machines (torchrun / SLURM set both themselves)
    num_workers: int = 0
    deterministic: bool = True
    bucket_by_length: bool = True  # batch captions of similar length together (less padding, faster)
    label_smoothing: float = 0.0  # e.g. 0.1: the target keeps 0.9 of its weight, the rest spread over the vocab
    # data augmentation: each training caption reads its image mirrored (left-right) with probability 0.5, from
    # the cached features of the mirrored training images (cross-entropy on cached features; SCST reads the images)
    flip: bool = False
    # scheduled sampling: the probability of feeding the model its own sampled word instead of the reference
    # rises linearly from 0 at epoch ss_start to ss_max over ss_ramp epochs (0: off)
    ss_max: float = 0.0
    ss_start: int = 0
    ss_ramp: int = 5
    init_from: str | None = None  # a model.pt to start from (its vocabulary too): e.g. SCST after cross-entropy
    # self-critical sequence training (Rennie et al. 2017): reward = CIDEr-D of sampled captions against the
    # image's training references, baseline = the greedy caption's reward, or the mean of the other samples
    scst: bool = False
    scst_samples: int = 5
    scst_baseline: str = "greedy"  # greedy | mean
    scst_max_len: int = 16
    scst_dropout: bool = True  # sample in train mode (dropout on; hard attention samples its locations, their
    # log-probabilities joining the score function), as the usual SCST code; false: the test-time network
    scst_bleu_weight: float = 0.0  # > 0: reward = CIDEr-D + this x sentence BLEU-4 (coco-caption's per image)


@dataclass
class DecodeConfig:
    beam_size: int = 5
    max_len: int = 30
    length_penalty: float = 0.0  # 0: plain sum of log-probs; 1: mean log-prob per word
    ban_unk: bool = True  # never output <unk> (a caption for people, not a placeholder)
    block_ngram: int = 0  # n > 1: a caption never repeats an n-gram (3 stops "a man in a man in a ...")
    repetition_penalty: float = 0.0  # nats off a word's log-probability per earlier use in the caption
    # consensus reranking (decoding/rerank.py): choose among the K beams by score + weight x CIDEr-D against the
    # captions of the consensus_k nearest training images; needs the training split (evaluate --data, caption
    # --consensus DATA)
    consensus: bool = False
    consensus_k: int = 30
    consensus_weight: float = 0.3
    mbr_weight: float = 0.0  # with consensus: + this x the beam's expected CIDEr-D against the image's other beams
    # an ensemble's word distribution: the mean of its members' probabilities (prob), or the normalised mean of
    # their log-probabilities (logprob: a product of experts, which a word needs every member to back)
    ensemble_mean: str = "prob"
    # test-time augmentation: every decoder also reads the features of the mirrored image (left-right flip), and
    # the two views decode as one ensemble (averaged as ensemble_mean says); evaluate, caption and serve (the
    # decoded validation of a training run reads the images alone)
    flip: bool = False

    def banned(self, vocab) -> tuple[int, ...]:
        return (vocab.unk_id,) if self.ban_unk else ()

    def search_options(self, vocab) -> dict:
        """The beam-search keyword arguments these settings give (besides beam size and length)."""
        return dict(length_penalty=self.length_penalty, banned=self.banned(vocab), block_ngram=self.block_ngram,
                    repetition_penalty=self.repetition_penalty)


# Settings whose default changed: the old value, for configs saved before the setting existed
# per-word reward became the default on 2026-11-26, the expected context on 2026-11-27
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
        if self.model.type not in ("nic", "soft", "hard", "uniform", "updown"):
            raise file_error(source, f"model.type must be nic, soft, hard, uniform or updown, not {self.model.type!r}")
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
