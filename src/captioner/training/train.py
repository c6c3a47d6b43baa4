"""Train a captioner from a config: dataset -> feature cache -> vocab -> Lightning fit -> model file.

A run folder holds everything about one training run:
    config.yaml  vocab.json  checkpoints/{best,last}.ckpt  logs/metrics.csv (CSV logs; logs/resumeN/ after each --resume)  tb/ (TensorBoard)
    model.pt     the best checkpoint exported as state_dict + vocab + config (what `captioner caption` loads)
"""

import logging
import os
import warnings
from pathlib import Path

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import DDPStrategy
from torch import Tensor

from captioner.checkpoint import load_model, save_model
from captioner.config import Config
from captioner.data.readers import load_dataset
from captioner.data.vocab import Vocab
from captioner.devices import trains_on_gpu
from captioner.distributed import barrier, join_early, processes_per_node
from captioner.errors import CaptionerError, file_error
from captioner.features import config_encoder, load_features, load_mirrored_features, split_rows
from captioner.io import torch_save_atomic, write_text_atomic
from captioner.metrics.bleu_reward import BleuReward, MixedReward
from captioner.metrics.cider_reward import CiderD
from captioner.model import CaptionModel
from captioner.training.data import (
    CaptionBatches,
    ImageBatches,
    ImageCaptionBatches,
    ImageFileBatches,
    batch_loader,
    encode_captions,
    with_teacher,
)
from captioner.training.distill import read_teacher
from captioner.training.module import CaptionModule

log = logging.getLogger("captioner")
warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning 2.6 on torch 2.14: harmless deprecation


def _precision(cfg: Config) -> str:
    if cfg.train.precision != "auto":
        return cfg.train.precision
    if trains_on_gpu(cfg):
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def _determinism(cfg: Config) -> bool | str:
    """Lightning's ``deterministic``: exact on the CPU; on a GPU "warn", since some CUDA kernels have no
    deterministic version (e.g. adaptive_avg_pool2d's backward, used when fine-tuning the encoder) and
    insisting would stop the run."""
    if not cfg.train.deterministic:
        return False
    return "warn" if trains_on_gpu(cfg) else True


def _check_gpus(cfg: Config) -> None:
    """More processes on a machine than it has GPUs would put two of them on one GPU, which NCCL refuses
    with a long traceback: say so in one line before any process group starts."""
    per_node = processes_per_node(cfg.train.devices)[0]
    if trains_on_gpu(cfg) and str(per_node).isdigit() and int(per_node) > torch.cuda.device_count():
        raise CaptionerError(f"{per_node} training processes per machine but {torch.cuda.device_count()} GPU(s) "
                             "visible: start at most one process per GPU, or --set train.accelerator=cpu")


def _start_model(cfg: Config, encoder):
    """The model ``train.init_from`` names, checked against the config (same decoder type) and the run's
    encoder."""
    start = load_model(cfg.train.init_from)
    if start.member_configs:
        raise file_error(cfg.train.init_from, f"holds an ensemble of {len(start.member_configs)} decoders; "
                         "train.init_from starts from one model")
    if start.config.model.type != cfg.model.type or start.config.encoder.name != cfg.encoder.name:
        raise file_error(cfg.train.init_from, f"is a {start.config.model.type} model on {start.config.encoder.name} "
                         f"features; this config trains {cfg.model.type} on {cfg.encoder.name}")
    _check_start_features(start, encoder.describe(), cfg.train.init_from, encoder.state_dict())
    return start


def _same_weights(carried: dict, ours: dict) -> bool:
    """Whether ``ours`` holds the weights ``carried`` (ours may be float32 copies of float16 ones)."""
    return carried.keys() == ours.keys() and all(
        torch.equal(ours[k].to(v.dtype), v) for k, v in carried.items())


FEATURE_KEYS = ("layer", "input_size", "grid_size")  # what else, beside the encoder's name, shapes its features


def _check_start_features(start, desc: dict, init_from: str, our_state: dict | None = None) -> None:
    """The start model must have been trained on the features this run feeds it: an attention decoder takes
    any grid, so a 7x7 run started from a 14x14 model would train on without a word otherwise. ``our_state``:
    this run's encoder weights, to tell a fine-tuned start model's own weights (no warning) from others."""
    theirs = {k: start.encoder.get(k) for k in FEATURE_KEYS if k in start.encoder}
    ours = {k: desc[k] for k in theirs}
    if theirs != ours:
        show = ", ".join(f"{k}={v}" for k, v in theirs.items())
        raise file_error(init_from, f"was trained on encoder features with {show}; this config gives "
                         + ", ".join(f"{k}={v}" for k, v in ours.items())
                         + " (set encoder.input_size / encoder.grid_size / encoder.layer to match)")
    carried = start.encoder_state
    if carried is not None and our_state is not None and _same_weights(carried, our_state):
        return  # e.g. recipes/after_finetune.sh: the start model's fine-tuned encoder, saved as a weights file
    if carried is not None or start.encoder.get("weights") != desc["weights"]:
        # e.g. a model whose encoder was fine-tuned, continued on frozen ImageNet features: it runs, but the
        # decoder starts on features unlike its own (intended when its encoder is this run's weights file)
        theirs = "the encoder weights it carries" if start.encoder_state is not None \
            else f"encoder weights {start.encoder.get('weights')}"
        log.warning("%s: its decoder learned on features of %s; this run's features come from encoder weights "
                    "%s", init_from, theirs, desc["weights"])


def _backend(cfg: Config) -> str:
    """The process-group backend for multi-process runs: NCCL between GPUs, gloo on CPUs."""
    return "nccl" if trains_on_gpu(cfg) else "gloo"


def _comparable(cfg: Config) -> dict:
    """A config as resuming compares it: everything but train.max_epochs and max_time (a run may be extended)."""
    d = cfg.to_dict()
    d["train"] = {k: v for k, v in d["train"].items() if k not in ("max_epochs", "max_time")}
    return d


def _log_version(out_dir: Path, resume: bool) -> str:
    """logs/ for a new run; logs/resume1, logs/resume2, ... for each resumption. Lightning's CSV logger
    empties a log folder it reuses, so a resumed run must never write to the one before it."""
    if not resume or not (out_dir / "logs").exists():
        return "logs"
    n = 1
    while (out_dir / "logs" / f"resume{n}").exists():
        n += 1
    return f"logs/resume{n}"


def _prepare_run(cfg: Config, out_dir: Path, resume: bool, train_records, vocab: Vocab | None = None) -> Vocab:
    config_file, vocab_file = out_dir / "config.yaml", out_dir / "vocab.json"
    if resume:
        if not vocab_file.exists():
            raise CaptionerError(f"{out_dir}: nothing to resume (no vocab.json); start without --resume")
        saved = Config.from_saved(yaml.safe_load(config_file.read_text()), source=str(config_file))
        if _comparable(saved) != _comparable(cfg):  # settings added since the run began count as they were then
            raise CaptionerError(f"{config_file}: the run was started with a different config; "
                                 "resume with the same config or use another --out")
        return Vocab.load(vocab_file)
    if (out_dir / "checkpoints" / "last.ckpt").exists():
        raise CaptionerError(f"{out_dir}: holds a previous run; pass --resume to continue it or use another --out")
    if vocab is None:  # (a run that starts from a trained model keeps that model's vocabulary)
        vocab = Vocab.build((c for r in train_records for c in r.captions), min_freq=cfg.data.min_word_freq)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(config_file, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    vocab.save(vocab_file)
    return vocab


def train(cfg: Config, data: str | Path, out_dir: str | Path, cache_root: str | Path | None = None,
          resume: bool = False, progress: bool = True) -> Path:
    """Train the model a config describes; returns the path of the exported best model (model.pt)."""
    out_dir = Path(out_dir)
    t = cfg.train
    _check_gpus(cfg)
    join_early(_backend(cfg))  # torchrun / SLURM: all processes from here on, sharing the feature extraction
    L.seed_everything(t.seed, workers=True)
    if t.scst and cfg.encoder.finetune:
        raise CaptionerError("train.scst with encoder.finetune is not supported: SCST trains on cached features "
                             "(fine-tune with cross-entropy, then run SCST on the fine-tuned encoder's features)")
    if t.scst and not t.init_from:
        raise CaptionerError("train.scst needs train.init_from: a model.pt trained with cross-entropy "
                             "(e.g. --set train.init_from=runs/soft_lite0/model.pt)")
    if t.distill and cfg.encoder.finetune and (t.distill_weight != 1 or t.distill_topk > 0):
        raise CaptionerError("train.distill_weight and train.distill_topk need cached features: with "
                             "encoder.finetune the teacher's captions count as human ones (leave both at default)")
    encoder = config_encoder(cfg)
    # the start model is checked before any features are made
    start = _start_model(cfg, encoder) if t.init_from and not resume else None
    if cfg.encoder.finetune:  # features computed in the loop from the images
        dataset = load_dataset(data)
        records = [r for r in dataset.records if r.split]
        rows_of = {r.name: i for i, r in enumerate(records)}
        train_records = [r for r in records if r.split == "train"]
        val_records = [r for r in records if r.split == "val"]
        train_rows, val_rows = [rows_of[r.name] for r in train_records], [rows_of[r.name] for r in val_records]
    else:  # the default: encoder features from the cache
        dataset, records, encoder, cache = load_features(cfg, data, cache_root, progress, encoder=encoder)
        train_records, train_rows = split_rows(records, cache, "train")
        val_records, val_rows = split_rows(records, cache, "val")
    if not train_records or not val_records:
        raise CaptionerError(f"{data}: needs images in both a 'train' and a 'val' split "
                             f"(found {dataset.splits()})")
    if t.val_images:
        val_records, val_rows = val_records[: t.val_images], val_rows[: t.val_images]
    vocab = _prepare_run(cfg, out_dir, resume, train_records, start.vocab if start else None)

    captions, owners = encode_captions(train_records, train_rows, vocab, cfg.data.max_caption_len)
    weights = soft = None
    if t.distill and not t.scst:  # a teacher's captions beside the human ones
        teacher = read_teacher(t.distill, dict(zip((r.name for r in train_records), train_rows, strict=True)),
                               vocab, cfg.data.max_caption_len, topk=t.distill_topk > 0)
        captions, owners, weights, soft = with_teacher(captions, owners, teacher, t.distill_weight)
        log.info("distillation: %d teacher captions beside %d human ones", len(teacher.captions),
                 len(captions) - len(teacher.captions))
    val_keys = [r.name for r in val_records]
    if cfg.encoder.finetune:
        paths = [r.image for r in records]
        train_set = ImageCaptionBatches(paths, encoder.preprocess, captions, owners)
        val_set = ImageFileBatches([paths[i] for i in val_rows], encoder.preprocess, val_keys)
    else:
        features = cache.streamed()  # rows read per batch from the memory-mapped cache, however large it is
        mirrored = _mirrored_rows(cfg, dataset, records, cache, cache_root, progress) \
            if t.flip and not t.scst else None  # (SCST samples from the plain images)
        train_set = CaptionBatches(features, captions, owners, mirrored, weights, soft)
        if t.scst:  # SCST samples captions per image and scores them against all its references
            train_set = ImageBatches(features, train_rows, [r.name for r in train_records])
        val_set = ImageBatches(features, val_rows, val_keys)
    pin = trains_on_gpu(cfg)  # batches copied to the GPU from pinned memory
    train_loader = batch_loader(train_set, t.batch_size, shuffle=True, seed=t.seed, num_workers=t.num_workers,
                                bucket_by_length=t.bucket_by_length and not t.scst, pin_memory=pin)
    val_loader = batch_loader(val_set, max(t.batch_size, 50), shuffle=False, num_workers=t.num_workers,
                              pin_memory=pin)

    desc = encoder.describe()
    L.seed_everything(t.seed, workers=True, verbose=False)  # the same initial weights whether or not this
    # run had to extract features first (extraction draws from the RNG)
    module = CaptionModule(cfg.to_dict(), vocab.to_dict(), encoder.global_dim, encoder.grid_dim, desc)
    module.val_references = {r.name: r.captions_raw for r in val_records}
    if start is not None:
        try:
            module.decoder.load_state_dict(start.decoder.state_dict())
        except RuntimeError as e:
            raise file_error(t.init_from, f"does not fit this config's model ({str(e).splitlines()[0]})") from None
    if t.scst:  # CIDEr-D with document frequencies from all training references (+ sentence BLEU-4)
        train_refs = {r.name: r.captions for r in train_records}
        module.reward = CiderD(train_refs)
        if t.scst_bleu_weight > 0:
            module.reward = MixedReward(module.reward, BleuReward(train_refs), t.scst_bleu_weight)
    if cfg.model.glove and not resume:  # a resumed run gets its (trained) embedding from the checkpoint
        from captioner.data.glove import init_embedding

        n = init_embedding(module.decoder.embed, cfg.model.glove, vocab, cfg.model.freeze_embeddings)
        log.info("word embedding: %d of %d words from %s", n, len(vocab), cfg.model.glove)
    module.decoder.embed.weight.requires_grad_(not cfg.model.freeze_embeddings)
    if cfg.encoder.finetune:
        module.attach_encoder(encoder)
    monitor = f"val/{t.monitor}"
    best = RunCheckpoint(dirpath=out_dir / "checkpoints", filename="best", monitor=monitor, mode="max",
                         save_top_k=1, enable_version_counter=False)
    # Every epoch, not only improving ones (Lightning's save_last only follows a top-k save): --resume
    # then repeats no finished epoch.
    latest = RunCheckpoint(dirpath=out_dir / "checkpoints", filename="last", save_top_k=1,
                           enable_version_counter=False)
    callbacks = [best, latest, EarlyStopping(monitor=monitor, mode="max", patience=t.early_stop_patience),
                 LearningRateMonitor(logging_interval="epoch")]
    if progress:
        callbacks.append(RichProgressBar())
    devices, num_nodes = processes_per_node(t.devices)
    several = num_nodes > 1 or str(devices) not in ("auto", "1") or t.num_nodes > 1
    trainer = L.Trainer(
        max_epochs=t.max_epochs, max_time=t.max_time, accelerator=t.accelerator, devices=devices,
        num_nodes=max(num_nodes, t.num_nodes),
        strategy=DDPStrategy(process_group_backend=_backend(cfg)) if several else "auto",
        use_distributed_sampler=False,  # our batch sampler gives each process its part of every batch
        precision=_precision(cfg), plugins=[AtomicCheckpointIO()],
        gradient_clip_val=t.grad_clip or None, deterministic=_determinism(cfg), callbacks=callbacks,
        logger=[CSVLogger(out_dir, name="", version=_log_version(out_dir, resume)),
                TensorBoardLogger(out_dir, name="", version="tb")],
        enable_progress_bar=progress, enable_model_summary=False, default_root_dir=out_dir,
        log_every_n_steps=max(1, min(50, len(train_loader) // 4)), num_sanity_val_steps=0)
    last = out_dir / "checkpoints" / "last.ckpt"
    trainer.fit(module, train_loader, val_loader, ckpt_path=str(last) if resume and last.exists() else None)
    if trainer.is_global_zero:
        export_best(best, module, out_dir, vocab, cfg, desc)
    barrier()  # the other processes return once model.pt is there
    return out_dir / "model.pt"


def _mirrored_rows(cfg: Config, dataset, records, cache, cache_root, progress: bool) -> tuple[dict, Tensor]:
    """train.flip: the mirrored training images' features, and for each row of the plain cache the row of its
    mirror among them (-1: none, e.g. a validation image)."""
    mirrored = load_mirrored_features(cfg, dataset, records, "train", cache_root, progress)
    mirror_of = torch.full((len(cache.names),), -1, dtype=torch.long)  # [N]
    for name, row in mirrored.index.items():
        if name in cache.index and name not in mirrored.failed:
            mirror_of[cache.index[name]] = row
    return mirrored.streamed(), mirror_of


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, for a run folder that may have been moved or copied before --resume.
    Lightning forgets the best score when the checkpoint folder's path changed, so the first epoch after
    resuming would replace the best checkpoint however poor it was; here the saved paths are moved to this
    folder and the score is kept."""

    @property
    def state_key(self) -> str:  # ModelCheckpoint's: checkpoints written by it resume with their best score
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def load_state_dict(self, state_dict: dict) -> None:
        old, new = state_dict.get("dirpath"), self.dirpath
        if old and new and old != new:
            def moved(path):
                return os.path.join(new, os.path.relpath(path, old)) if path else path

            state_dict = {**state_dict, "dirpath": new,
                          **{k: moved(state_dict[k]) for k in ("best_model_path", "kth_best_model_path",
                                                               "last_model_path") if k in state_dict},
                          "best_k_models": {moved(k): v for k, v in state_dict.get("best_k_models", {}).items()}}
        super().load_state_dict(state_dict)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written like every other file here: temp file, fsync, rename. A run killed
    while saving keeps its previous checkpoint intact instead of a half-written one."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        torch_save_atomic(path, checkpoint)


def export_best(best: ModelCheckpoint, module: CaptionModule, out_dir: Path, vocab: Vocab, cfg: Config,
                desc: dict) -> Path:
    """Write the best checkpoint's decoder as ``model.pt`` (state_dict + vocab + config)."""
    if best.best_model_path:
        ckpt = torch.load(best.best_model_path, map_location="cpu", weights_only=True)
        module.load_state_dict(ckpt["state_dict"])
    score = best.best_model_score
    metrics = {best.monitor: float(score)} if score is not None else {}
    encoder_state = None
    if module.encoder is not None:  # fine-tuned: the encoder's weights belong to the model
        encoder_state = {k: v.detach().cpu() for k, v in module.encoder.state_dict().items()}
    model = CaptionModel(module.decoder.cpu().eval(), vocab, cfg, desc, metrics, encoder_state)
    path = save_model(out_dir / "model.pt", model)
    log.info("best model (%s) written to %s", metrics, path)
    return path
