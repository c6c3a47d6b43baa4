"""Decoders: Show-and-Tell (NIC), soft and hard attention (and a uniform-attention ablation), and Up-Down
top-down attention, behind one per-step interface."""

from captioner.config import ModelConfig
from captioner.decoders.base import Decoder
from captioner.decoders.hard import HardAttentionDecoder
from captioner.decoders.nic import NICDecoder
from captioner.decoders.soft import SoftAttentionDecoder
from captioner.decoders.uniform import UniformAttentionDecoder
from captioner.decoders.updown import UpDownDecoder

__all__ = ["Decoder", "NICDecoder", "SoftAttentionDecoder", "HardAttentionDecoder", "UniformAttentionDecoder",
           "UpDownDecoder", "build_decoder"]


def build_decoder(cfg: ModelConfig, vocab_size: int, global_dim: int, grid_dim: int) -> Decoder:
    """Create the decoder a model config describes, for features of the given sizes."""
    dims = dict(embed_dim=cfg.embed_dim, hidden_dim=cfg.hidden_dim, dropout=cfg.dropout)
    if cfg.type == "nic":
        return NICDecoder(vocab_size, global_dim, **dims)
    if cfg.type == "updown":
        return UpDownDecoder(vocab_size, grid_dim, attention_dim=cfg.attention_dim, **dims)
    attention = dict(attention_dim=cfg.attention_dim, alpha_c=cfg.alpha_c, deep_output=cfg.deep_output, **dims)
    if cfg.type == "soft":
        return SoftAttentionDecoder(vocab_size, grid_dim, **attention)
    if cfg.type == "uniform":
        return UniformAttentionDecoder(vocab_size, grid_dim, **attention)
    if cfg.type in ("spatial", "adaptive"):
        from captioner.decoders.adaptive import AdaptiveAttentionDecoder

        return AdaptiveAttentionDecoder(vocab_size, grid_dim, sentinel=cfg.type == "adaptive",
                                        attention_dim=cfg.attention_dim, sentinel_start=cfg.sentinel_start, **dims)
    if cfg.type == "transformer":
        from captioner.decoders.transformer import TransformerDecoder

        return TransformerDecoder(vocab_size, grid_dim, global_dim, num_layers=cfg.num_layers,
                                  num_heads=cfg.num_heads, ffn_dim=cfg.ffn_dim, positions=cfg.positions, **dims)
    if cfg.type == "hard":
        return HardAttentionDecoder(
            vocab_size, grid_dim, reinforce_weight=cfg.reinforce_weight, entropy_weight=cfg.entropy_weight,
            baseline_decay=cfg.baseline_decay, expected_context_prob=cfg.expected_context_prob,
            hard_inference=cfg.hard_inference, reinforce_reward=cfg.reinforce_reward, **attention)
    raise ValueError(f"unknown model type {cfg.type!r}")
