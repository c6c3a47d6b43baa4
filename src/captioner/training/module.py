"""The LightningModule: teacher-forced training, DECODED validation (beam search + coco-caption metrics).

Model selection, early stopping and the LR schedule all watch ``val/bleu4`` or ``val/cider`` computed
from captions the model actually generates, never from teacher-forced argmax predictions.
"""

import time

import lightning as L
import torch

from captioner.config import Config
from captioner.data.vocab import Vocab
from captioner.decoders import build_decoder
from captioner.decoding import beam_search
from captioner.distributed import merge_dicts, spread
from captioner.metrics.coco import score_corpus


class CaptionModule(L.LightningModule):
    def __init__(self, config: dict, vocab: dict, global_dim: int, grid_dim: int, encoder: dict | None = None):
        super().__init__()
        self.save_hyperparameters()  # plain dicts and ints: checkpoints load with weights_only=True
        self.cfg = Config.from_dict(config)
        self.vocab = Vocab.from_dict(vocab)
        self.decoder = build_decoder(self.cfg.model, len(self.vocab), global_dim, grid_dim)
        self.val_references: dict[str, list[str]] = {}  # image key -> raw reference captions
        self._val_captions: dict[str, str] = {}
        self.encoder = None  # set by attach_encoder() when the encoder is fine-tuned

    def attach_encoder(self, encoder) -> None:
        """Fine-tuning: compute features from images in the loop and train the encoder too."""
        self.encoder = encoder
        for p in encoder.parameters():
            p.requires_grad_(True)

    def features(self, batch: dict) -> dict:
        if "feats" in batch:
            return batch["feats"]
        global_, grid = self.encoder(batch["images"])  # [B, D], [B, L, C]
        return {"global": global_, "grid": grid}

    # ---- training -------------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        self._epoch_start = time.perf_counter()
        # dropout and hard attention's sampling draw from the global RNG: seed it from (seed, epoch, rank) so
        # that a run resumed from an epoch's checkpoint makes the same draws as one never interrupted
        torch.manual_seed(self.cfg.train.seed * 1_000_003 + 1_009 * self.current_epoch + self.global_rank)

    def on_train_epoch_end(self) -> None:  # Lightning calls this after the epoch's decoded validation
        self.log("time/epoch_s", time.perf_counter() - self._epoch_start, sync_dist=True)  # wall time, validation incl.
        if self.trainer.world_size > 1:  # DDP: every process must hold the same weights
            checksum = sum(float(p.detach().double().sum()) for p in self.parameters())
            gap = spread(checksum)
            self.log("train/process_weight_gap", gap, sync_dist=True)
            if gap > 0:
                raise RuntimeError(f"DDP processes out of sync after epoch {self.current_epoch + 1} "
                                   f"(weight checksums differ by {gap})")

    def sample_prob(self) -> float:
        """Scheduled sampling's probability for the current epoch (0 when it is off)."""
        t = self.cfg.train
        if t.ss_max <= 0:
            return 0.0
        return t.ss_max * min(1.0, max(0.0, (self.current_epoch - t.ss_start + 1) / max(1, t.ss_ramp)))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        terms = self.decoder.loss(self.features(batch), batch["captions"], sample_prob=self.sample_prob(),
                                  label_smoothing=self.cfg.train.label_smoothing)
        size = batch["captions"].size(0)
        for name, value in terms.items():
            self.log(f"train/{name.removeprefix('log_')}", value.detach(), batch_size=size,
                     prog_bar=name == "loss")
        return terms["loss"]

    # ---- decoded validation ---------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val_captions = {}

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        t = self.cfg.train
        hyps = beam_search(self.decoder, self.features(batch), self.vocab.start_id, self.vocab.end_id,
                           beam_size=t.val_beam_size, max_len=t.val_max_len,
                           **self.cfg.decode.search_options(self.vocab))
        for key, hyp in zip(batch["keys"], hyps, strict=True):
            self._val_captions[key] = " ".join(self.vocab.decode(hyp.tokens))

    def on_validation_epoch_end(self) -> None:
        captions = merge_dicts(self._val_captions)  # DDP: each process decoded part of the images
        if not captions or not self.val_references:
            return
        refs = {k: self.val_references[k] for k in captions}
        # scored whole on every process (same numbers everywhere: checkpointing and early stopping agree)
        scores, _ = score_corpus(captions, refs, metrics=("bleu", "cider"), tokenizer="python")
        lengths = [len(c.split()) for c in captions.values()]
        for name, value, shown in [("bleu4", scores["BLEU-4"], True), ("bleu1", scores["BLEU-1"], False),
                                   ("cider", scores["CIDEr-D"], True),
                                   ("mean_length", sum(lengths) / len(lengths), False),
                                   ("distinct_words", float(len({w for c in captions.values() for w in c.split()})),
                                    False)]:
            self.log(f"val/{name}", value, prog_bar=shown, sync_dist=True)

    # ---- optimisation ---------------------------------------------------------------------------
    def configure_optimizers(self):
        t = self.cfg.train
        groups = [{"params": list(self.decoder.parameters()), "lr": t.lr}]
        if self.encoder is not None:  # the encoder gets its own (smaller) learning rate
            groups.append({"params": list(self.encoder.parameters()), "lr": self.cfg.encoder.lr})
        optimizer = torch.optim.Adam(groups, lr=t.lr, weight_decay=t.weight_decay)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=t.lr_factor, patience=t.lr_patience)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "monitor": f"val/{t.monitor}", "interval": "epoch"}}
