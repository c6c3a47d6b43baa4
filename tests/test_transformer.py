"""The transformer decoder: teacher forcing = word-by-word decoding with the key/value cache, beam search over
the cache, learning-rate warm-up, a short training run on the synthetic shapes, model files."""


import lightning as L
import pytest
import torch
import torch.nn.functional as F

from captioner.checkpoint import load_model, save_model
from captioner.config import Config, ModelConfig, TrainConfig, load_config
from captioner.data.vocab import Vocab
from captioner.decoders import build_decoder
from captioner.decoders.ensemble import EnsembleDecoder
from captioner.decoders.transformer import TransformerDecoder
from captioner.decoding import beam_search
from captioner.model import CaptionModel
from captioner.training.module import CaptionModule
from conftest import (
    GLOBAL_DIM,
    GRID_DIM,
    LOCATIONS,
    VOCAB,
    random_captions,
    random_feats,
    shuffled_baseline,
    small_decoder,
)

START, END = 1, 2
TIED = {"embed_dim": 32}  # = hidden_dim: the output layer is the embedding matrix
UNTIED = {"embed_dim": 16}  # projected to hidden_dim; an output matrix of its own
LEARNED = {"embed_dim": 32, "positions": "learned"}
VARIANTS = [TIED, UNTIED, LEARNED]


def transformer(**overrides) -> TransformerDecoder:
    settings = {"hidden_dim": 32, "num_layers": 2, "num_heads": 4, "ffn_dim": 64, "dropout": 0.0, **overrides}
    return build_decoder(ModelConfig(type="transformer", **settings), VOCAB, GLOBAL_DIM, GRID_DIM)


def test_tied_and_untied_output_layers():
    tied, untied = transformer(**TIED), transformer(**UNTIED)
    assert tied.fc.weight is tied.embed.weight and isinstance(tied.word_proj, torch.nn.Identity)
    assert untied.fc.weight is not untied.embed.weight and untied.word_proj.in_features == 16


@pytest.mark.parametrize("overrides", VARIANTS)
def test_gradients_reach_every_parameter(overrides):
    dec = transformer(**overrides, dropout=0.1).train()
    dec.loss(random_feats(4), random_captions(4, length=9))["loss"].backward()
    for name, p in dec.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("overrides", VARIANTS)
def test_step_by_step_decoding_equals_teacher_forcing(overrides):
    dec = transformer(**overrides).eval()
    feats, caps = random_feats(3), random_captions(3, length=9)
    out = dec.teacher_forcing(feats, caps)
    assert out["logits"].shape == (3, 8, VOCAB) and out["alphas"].shape == (3, 8, LOCATIONS)
    ctx = dec.encode(feats)
    state = dec.init_state(ctx)
    for t in range(caps.size(1) - 1):
        logits, state, alpha = dec.step_logits(ctx, state, caps[:, t])
        assert state["self_k0"].shape == (3, 4, t + 1, 8)  # [B, heads, words so far, d_h]: one more per word
        torch.testing.assert_close(logits, out["logits"][:, t], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(alpha, out["alphas"][:, t], atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(out["alphas"].sum(-1), torch.ones(3, 8))  # a map over the grid cells


def test_no_alpha_regulariser():
    """The doubly-stochastic term of Show, Attend and Tell is not a transformer's: the loss is the cross-entropy."""
    dec = transformer(**TIED).eval()
    terms = dec.loss(random_feats(2), random_captions(2))
    assert set(terms) == {"nll", "loss"} and torch.equal(terms["loss"], terms["nll"])


def test_cache_rows_travel_with_their_sequences():
    """Reordering the state's rows (as beam search does) = decoding the reordered sequences from the start."""
    dec = transformer(**UNTIED).eval()
    feats, caps = random_feats(4), random_captions(4, length=7)
    order = torch.tensor([2, 0, 0, 3])
    ctx = dec.encode(feats)
    state = dec.init_state(ctx)
    for t in range(3):
        _, state, _ = dec.step(ctx, state, caps[:, t])
    state = {k: v.index_select(0, order) for k, v in state.items()}
    ctx = {k: v.index_select(0, order) for k, v in ctx.items()}
    logp, _, alpha = dec.step(ctx, state, caps[order, 3])
    out = dec.teacher_forcing({k: v[order] for k, v in feats.items()}, caps[order, :5])
    torch.testing.assert_close(logp, F.log_softmax(out["logits"][:, 3], -1), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(alpha, out["alphas"][:, 3], atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("overrides", [TIED, LEARNED])
def test_batched_beam_search_equals_per_image(overrides):
    dec = transformer(**overrides).eval()
    feats = random_feats(6, seed=3)
    batched = beam_search(dec, feats, START, END, beam_size=4, max_len=10)
    for i, hyp in enumerate(batched):
        single = beam_search(dec, {k: v[i : i + 1] for k, v in feats.items()}, START, END, beam_size=4, max_len=10)[0]
        assert hyp.tokens == single.tokens
        assert hyp.score == pytest.approx(single.score, abs=1e-4)


def test_joins_ensembles_with_lstm_decoders():
    """In an ensemble with soft and adaptive attention the cache still travels with its beams: batched = per
    image, and a one-member ensemble decodes as the transformer alone (also reading mirrored features)."""
    tr = transformer(**TIED).eval()
    feats = random_feats(5, seed=4)
    alone = beam_search(tr, feats, START, END, beam_size=3, max_len=10)
    one = beam_search(EnsembleDecoder([tr]), feats, START, END, beam_size=3, max_len=10)
    assert [h.tokens for h in one] == [h.tokens for h in alone]
    mixed = EnsembleDecoder([tr, small_decoder("soft").eval(), small_decoder("adaptive").eval()],
                            mirrored=[False, True, False])
    batched = beam_search(mixed, feats, START, END, beam_size=3, max_len=10)
    for i, hyp in enumerate(batched):
        single = beam_search(mixed, {k: v[i : i + 1] for k, v in feats.items()}, START, END, beam_size=3, max_len=10)
        assert hyp.tokens == single[0].tokens
        assert hyp.score == pytest.approx(single[0].score, abs=1e-4)
        assert hyp.alphas.shape == (len(hyp.tokens), LOCATIONS)


@pytest.mark.parametrize("beam_size", [1, 3, 5])
def test_beam_search_scores_are_the_teacher_forced_scores(beam_size):
    """Each caption's score and attention maps, recomputed from scratch without a cache, are what beam search
    reported: the cache was reordered with its beams at every step (and compacted as images finished)."""
    dec = transformer(**TIED).eval()
    feats = random_feats(5, seed=1)
    for i, hyp in enumerate(beam_search(dec, feats, START, END, beam_size=beam_size, max_len=8)):
        words = torch.tensor([[START, *hyp.tokens, END]])
        with torch.no_grad():
            out = dec.teacher_forcing({k: v[i : i + 1] for k, v in feats.items()}, words)
        logp = F.log_softmax(out["logits"][0], -1)  # [n + 1, V]
        n = len(hyp.tokens) + hyp.finished
        score = logp[torch.arange(n), words[0, 1 : n + 1]].sum()
        assert hyp.score == pytest.approx(float(score), abs=1e-4)
        torch.testing.assert_close(hyp.alphas, out["alphas"][0, : len(hyp.tokens)], atol=1e-5, rtol=1e-4)


# ---- learning-rate warm-up ----------------------------------------------------------------------
def _module(warmup_steps: int, lr: float = 1e-3) -> CaptionModule:
    cfg = Config(model=ModelConfig(type="transformer", embed_dim=32, hidden_dim=32, num_layers=1, num_heads=4,
                                   ffn_dim=32, dropout=0.0),
                 train=TrainConfig(lr=lr, warmup_steps=warmup_steps))
    vocab = Vocab.build([[f"w{i}" for i in range(VOCAB - 4)]])
    return CaptionModule(cfg.to_dict(), vocab.to_dict(), GLOBAL_DIM, GRID_DIM)


def test_warm_up_rises_linearly_then_leaves_the_rate_to_the_plateau_schedule():
    module = _module(warmup_steps=10)
    optimizer = module.configure_optimizers()["optimizer"]
    group = optimizer.param_groups[0]
    assert group["lr"] == 0.0  # before the first step
    for step, lr in [(0, 0.0), (5, 5e-4), (10, 1e-3)]:
        module.warm_up(optimizer, step)
        assert group["lr"] == pytest.approx(lr)
    group["lr"] = 4e-4  # a plateau decay
    module.warm_up(optimizer, 11)
    assert group["lr"] == 4e-4


class _Batches(torch.utils.data.Dataset):
    def __len__(self):
        return 64

    def __getitem__(self, i):
        return {"feats": random_feats(4, seed=i), "captions": random_captions(4, seed=i)}


class _RecordLR(L.Callback):
    def __init__(self):
        self.lrs = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.lrs.append(optimizer.param_groups[0]["lr"])


@pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`")
@pytest.mark.parametrize("warmup_steps", [0, 4])
def test_warm_up_in_training(warmup_steps):
    """The rate each optimizer step uses, in a Lightning run; warmup_steps 0: the configured rate throughout."""
    module, record = _module(warmup_steps), _RecordLR()
    loader = torch.utils.data.DataLoader(_Batches(), batch_size=None)
    trainer = L.Trainer(max_steps=7, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        callbacks=[record])
    trainer.fit(module, loader)
    expected = [1e-3 * min(1.0, s / warmup_steps) if warmup_steps else 1e-3 for s in range(7)]
    assert record.lrs == pytest.approx(expected)


# ---- training and model files -------------------------------------------------------------------


@pytest.mark.slow
def test_short_training_run_learns_the_images(tmp_path):
    """synth_transformer for 10 short epochs: its captions describe their own images, not any image."""
    from captioner.data.synth import make_synth
    from captioner.evaluation import evaluate
    from captioner.training.train import train

    data = make_synth(tmp_path / "synth", n_train=300, n_val=20, n_test=40, seed=1)
    cfg = load_config("synth_transformer", ["train.max_epochs=10"])
    path = train(cfg, data, tmp_path / "run", cache_root=tmp_path / "cache", progress=False)
    report = evaluate(load_model(path), data, "test", beam_size=3, cache_root=tmp_path / "cache",
                      tokenizer="python", metrics=("bleu", "cider"), out=tmp_path / "report.json", progress=False)
    base = shuffled_baseline(report)
    assert report["metrics"]["BLEU-4"] >= base["BLEU-4"] + 0.05
    assert report["metrics"]["CIDEr-D"] >= 1.3 * base["CIDEr-D"]


@pytest.mark.parametrize("overrides", [TIED, UNTIED])
def test_model_file_round_trip_decodes_the_same(tmp_path, overrides):
    dec = transformer(**overrides).eval()
    with torch.no_grad():
        dec.fc.bias[END] -= 3.0  # captions of some words
    vocab = Vocab.build([[f"w{i}" for i in range(VOCAB - 4)]])
    cfg = Config(model=ModelConfig(type="transformer", hidden_dim=32, num_layers=2, num_heads=4, ffn_dim=64,
                                   dropout=0.0, **overrides))
    encoder = {"name": "tiny", "weights": "none", "input_size": 64, "grid_size": 3,
               "global_dim": GLOBAL_DIM, "grid_dim": GRID_DIM}
    path = save_model(tmp_path / "model.pt", CaptionModel(dec, vocab, cfg, encoder))
    loaded = load_model(path).decoder
    assert (loaded.fc.weight is loaded.embed.weight) == (dec.fc.weight is dec.embed.weight)
    feats = random_feats(4, seed=2)
    before = beam_search(dec, feats, START, END, beam_size=3, max_len=8)
    after = beam_search(loaded, feats, START, END, beam_size=3, max_len=8)
    assert [h.tokens for h in after] == [h.tokens for h in before] and any(h.tokens for h in before)
    for a, b in zip(after, before, strict=True):
        assert a.score == pytest.approx(b.score, abs=1e-5)
        torch.testing.assert_close(a.alphas, b.alphas)
