"""The LightningModule: teacher-forced training, DECODED validation (beam search + coco-caption metrics).

Model selection, early stopping and the LR schedule all watch ``val/bleu4`` or ``val/cider`` computed
from captions the model actually generates, never from teacher-forced argmax predictions.
"""

import logging
import time

import lightning as L
import torch

from captioner.config import Config
from captioner.data.vocab import Vocab
from captioner.decoders import build_decoder
from captioner.decoding import beam_search
from captioner.decoding.sample import sample_captions
from captioner.distributed import merge_dicts, spread
from captioner.metrics.coco import score_corpus

log = logging.getLogger("captioner")


def sentinel_warning(mean_beta: float, start: float) -> str | None:
    """Adaptive attention: what to say when an epoch's mean sentinel weight beta_t shows the sentinel stuck
    shut (the decoder computes spatial attention) or taking every word (it never looks); None when in use."""
    if mean_beta < 1e-3:
        return (f"the visual sentinel has not opened (mean beta {mean_beta:.1e}): lower model.sentinel_start "
                f"(now {start:g} nats; docs/training.md, Decoders)")
    if mean_beta > 0.99:
        return (f"the visual sentinel takes every word (mean beta {mean_beta:.3f}), the decoder does not look: "
                f"raise model.sentinel_start (now {start:g} nats; docs/training.md, Decoders)")
    return None


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
        self._sentinel: list[torch.Tensor] = []  # adaptive attention: each step's mean beta_t this epoch

    def attach_encoder(self, encoder) -> None:
        """Fine-tuning: compute features from images in the loop and train the encoder too (its last
        ``encoder.finetune_blocks`` blocks, or all of it)."""
        self.encoder = encoder.unfreeze_last(self.cfg.encoder.finetune_blocks)

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
        if self._sentinel:
            warning = sentinel_warning(float(torch.stack(self._sentinel).mean()), self.cfg.model.sentinel_start)
            self._sentinel = []
            if warning and self.global_rank == 0:
                log.warning(f"epoch {self.current_epoch + 1}: {warning}")

    def sample_prob(self) -> float:
        """Scheduled sampling's probability for the current epoch (0 when it is off)."""
        t = self.cfg.train
        if t.ss_max <= 0:
            return 0.0
        return t.ss_max * min(1.0, max(0.0, (self.current_epoch - t.ss_start + 1) / max(1, t.ss_ramp)))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if self.cfg.train.scst:
            return self.scst_step(batch)
        t = self.cfg.train
        soft = (batch["topk_ids"], batch["topk_probs"]) if "topk_ids" in batch else None
        terms = self.decoder.loss(self.features(batch), batch["captions"], sample_prob=self.sample_prob(),
                                  label_smoothing=t.label_smoothing, weights=batch.get("weights"), soft=soft,
                                  soft_weight=t.distill_topk)
        size = batch["captions"].size(0)
        if "log_sentinel" in terms:
            self._sentinel.append(terms["log_sentinel"].detach())
        for name, value in terms.items():
            self.log(f"train/{name.removeprefix('log_')}", value.detach(), batch_size=size,
                     prog_bar=name == "loss")
        return terms["loss"]

    def scst_step(self, batch: dict) -> torch.Tensor:
        """Self-critical sequence training: raise the log-probability of sampled captions that score a
        higher CIDEr-D than the baseline, lower it for those that score less (REINFORCE with a baseline)."""
        t, vocab, n = self.cfg.train, self.vocab, self.cfg.train.scst_samples
        feats, keys = self.features(batch), batch["keys"]
        banned = self.cfg.decode.banned(vocab)
        self.decoder.train(t.scst_dropout)  # dropout off: the samples and gradients are the test-time network's
        words, logp_sum, _ = sample_captions(self.decoder, feats, vocab.start_id, vocab.end_id, n=n,
                                             max_len=t.scst_max_len, banned=banned)  # [B*n, T], [B*n]
        self.decoder.train()
        names = [k for k in keys for _ in range(n)]
        reward = torch.as_tensor(self.reward.score(names, [vocab.decode(w) for w in words.tolist()]),
                                 dtype=torch.float32, device=logp_sum.device)  # [B*n]
        if t.scst_baseline == "greedy":  # the caption the model would give at test time
            self.decoder.eval()
            greedy = beam_search(self.decoder, feats, vocab.start_id, vocab.end_id, beam_size=1,
                                 max_len=t.scst_max_len, banned=banned)
            self.decoder.train()
            base = torch.as_tensor(self.reward.score(keys, [vocab.decode(h.tokens) for h in greedy]),
                                   dtype=torch.float32, device=logp_sum.device).repeat_interleave(n)  # [B*n]
        else:  # the mean reward of the image's other samples
            r = reward.view(-1, n)  # [B, n]
            base = ((r.sum(1, keepdim=True) - r) / (n - 1)).view(-1)  # [B*n]
        loss = -((reward - base) * logp_sum).mean()
        size = len(keys)
        self.log("train/loss", loss.detach(), batch_size=size, prog_bar=True)
        self.log("train/reward", reward.mean(), batch_size=size, prog_bar=True)
        self.log("train/baseline_reward", base.mean(), batch_size=size)
        return loss

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
            groups.append({"params": [p for p in self.encoder.parameters() if p.requires_grad],
                           "lr": self.cfg.encoder.lr})
        if t.warmup_steps > 0:  # each group starts at 0 and rises to its own rate
            for group in groups:
                group["target_lr"], group["lr"] = group["lr"], 0.0
        optimizer = torch.optim.Adam(groups, lr=t.lr, weight_decay=t.weight_decay)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=t.lr_factor, patience=t.lr_patience)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "monitor": f"val/{t.monitor}", "interval": "epoch"}}

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        if self.cfg.train.warmup_steps > 0:
            self.warm_up(optimizer, self.trainer.global_step)
        optimizer.step(closure=optimizer_closure)

    def warm_up(self, optimizer, step: int) -> None:
        """Linear warm-up: before optimizer step ``step`` (counting from 0), each group's learning rate is
        ``target_lr * step / warmup_steps``; from step ``warmup_steps`` on it is left to the plateau schedule,
        which therefore starts from the full rate (warm-up should end before the first plateau decay can:
        within the first ``lr_patience`` epochs)."""
        n = self.cfg.train.warmup_steps
        if step > n:
            return
        for group in optimizer.param_groups:
            group["lr"] = group["target_lr"] * min(1.0, step / n)
