"""A transformer decoder (Vaswani et al. 2017) over the encoder grid, with pre-norm layers (Xiong et al. 2020).

The memory the words attend to: the L grid cells a_i and the global feature g, projected to the model size d,
    m_i     = LN_m(W_a a_i) + P_i          i = 1..L    (P_i: fixed 2-D sinusoidal position of cell i)
    m_{L+1} = LN_m(W_g g)                              one extra slot for the whole image
Per word t, with x^0_t = sqrt(E) W_e E y_{t-1} + p_t (word embedding, projected to d when E != d;
p_t sinusoidal or learned), each of the N layers computes
    x <- x + Drop(SelfAttn(LN_1 x))        masked: position t attends to positions 1..t only
    x <- x + Drop(CrossAttn(LN_2 x, m))    over the L + 1 memory slots
    x <- x + Drop(W_2 GELU(W_1 LN_3 x))    feed-forward, inner size ffn_dim
    p(y_t) = softmax(W_o LN_f x^N_t + b_o)
Attn(q, K, V) = concat_h softmax(q_h K_h^T / sqrt(d_h)) V_h, projected by W_O, over num_heads heads.
W_o is the word embedding E itself (tied weights) when E = d; with E != d the embedding goes through W_e and
W_o is a matrix of its own.

Training (:meth:`teacher_forcing`) runs all positions at once under a causal mask. Decoding goes word by word
through the same code, with a key/value cache in the state: ``self_k{i}``, ``self_v{i}`` [B, heads, t, d_h],
layer i's self-attention keys and values of the t words so far (one more position per step). The memory's
keys and values, ``cross_k{i}``, ``cross_v{i}`` [B, heads, L+1, d_h], are computed once per image in
:meth:`encode`. Every tensor is batch-first, so beam search expands and reorders them as any other state.

The attention shown for a word (alpha [B, L]) is the last layer's cross-attention, mean over heads, over the
L grid cells, renormalised to sum to 1 (the share that goes to the global slot is left out). The
doubly-stochastic regulariser of Show, Attend and Tell does not apply: there is no alpha_c term.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captioner.decoders.base import Decoder, Features, State


class TransformerDecoder(Decoder):
    has_attention = True

    def __init__(self, vocab_size: int, feature_dim: int, global_dim: int, embed_dim: int = 512,
                 hidden_dim: int = 512, num_layers: int = 3, num_heads: int = 8, ffn_dim: int = 2048,
                 dropout: float = 0.1, positions: str = "sinusoidal", max_positions: int = 128, pad_id: int = 0):
        super().__init__(vocab_size, pad_id)
        self.dim = hidden_dim  # d
        if num_layers < 1 or hidden_dim % num_heads:
            raise ValueError(f"need num_layers >= 1 and hidden_dim ({hidden_dim}) a multiple of "
                             f"num_heads ({num_heads})")
        if positions not in ("sinusoidal", "learned"):
            raise ValueError(f"positions must be sinusoidal or learned, not {positions!r}")
        self.embed = nn.Embedding(vocab_size, embed_dim)  # E
        nn.init.normal_(self.embed.weight, std=embed_dim ** -0.5)  # sqrt(E) E y: entries of unit variance
        self.word_proj = nn.Linear(embed_dim, hidden_dim) if embed_dim != hidden_dim else nn.Identity()  # W_e
        # learned positions: beyond max_positions every word takes the last one (sinusoidal: no limit)
        self.pos_embed = nn.Embedding(max_positions, hidden_dim) if positions == "learned" else None
        if self.pos_embed is not None:
            nn.init.normal_(self.pos_embed.weight, std=0.1)
        self.grid_proj = nn.Linear(feature_dim, hidden_dim)  # W_a
        self.global_proj = nn.Linear(global_dim, hidden_dim)  # W_g
        self.memory_norm = nn.LayerNorm(hidden_dim)  # LN_m
        self.layers = nn.ModuleList(DecoderLayer(hidden_dim, num_heads, ffn_dim, dropout) for _ in range(num_layers))
        self.final_norm = nn.LayerNorm(hidden_dim)  # LN_f
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden_dim, vocab_size)  # W_o, b_o
        for name, weight in self.named_parameters():  # Glorot-uniform matrices, as Vaswani et al.'s code
            if weight.dim() > 1 and not name.startswith(("embed.", "pos_embed.")):
                nn.init.xavier_uniform_(weight)
        if embed_dim == hidden_dim:
            self.fc.weight = self.embed.weight  # tied: one [V, d] matrix reads and writes words

    # ---- the per-step interface -------------------------------------------------------------------
    def encode(self, feats: Features) -> State:
        """The memory's keys and values for every layer's cross-attention, computed once per image."""
        memory = self.memory(feats)  # [B, L+1, d]
        ctx = {}
        for i, layer in enumerate(self.layers):
            ctx[f"cross_k{i}"], ctx[f"cross_v{i}"] = layer.cross_att.keys_values(memory)  # [B, heads, L+1, d_h]
        return ctx

    def memory(self, feats: Features) -> Tensor:
        """m: the projected grid cells with their positions, then the projected global feature: [B, L+1, d]."""
        grid, global_ = feats["grid"], feats["global"]  # [B, L, C], [B, D]
        slots = torch.cat([self.grid_proj(grid), self.global_proj(global_).unsqueeze(1)], dim=1)  # [B, L+1, d]
        slots = self.memory_norm(slots)
        where = grid_positions(grid.size(1), slots.size(2)).to(slots)  # [L, d]
        where = F.pad(where, (0, 0, 0, 1))  # [L+1, d]: no position for the global slot
        return self.dropout(slots + where)

    def init_state(self, ctx: State) -> State:
        """Empty self-attention caches: [B, heads, 0, d_h] per layer."""
        k = ctx["cross_k0"]
        empty = k.new_zeros(k.size(0), k.size(1), 0, k.size(3))
        return {f"self_{kv}{i}": empty for i in range(len(self.layers)) for kv in "kv"}

    def step_logits(self, ctx: State, state: State, prev: Tensor) -> tuple[Tensor, State, Tensor]:
        hidden, state, alpha = self.run(ctx, state, prev.unsqueeze(1))  # [B, 1, d], .., [B, 1, L]
        return self.fc(hidden.squeeze(1)), state, alpha.squeeze(1)  # [B, V], state, [B, L]

    # ---- training ---------------------------------------------------------------------------------
    def teacher_forcing(self, feats: Features, captions: Tensor, sample_prob: float = 0.0) -> dict[str, Tensor]:
        """All positions at once under the causal mask: the same computation as :meth:`step_logits` word by word.

        Scheduled sampling needs each word's prediction before the next input: it takes the per-step loop.
        """
        if sample_prob > 0:
            return super().teacher_forcing(feats, captions, sample_prob)
        ctx = self.encode(feats)
        hidden, _, alphas = self.run(ctx, self.init_state(ctx), captions[:, :-1])  # [B, T, d], .., [B, T, L]
        return {"logits": self.fc(hidden), "alphas": alphas}  # [B, T, V], [B, T, L]

    # ---- the layers -------------------------------------------------------------------------------
    def run(self, ctx: State, state: State, words: Tensor) -> tuple[Tensor, State, Tensor]:
        """Words [B, T] at the positions after the t cached ones -> (LN_f x^N [B, T, d], the caches grown to
        t + T positions, alpha [B, T, L]). Several words at once only from an empty cache (teacher forcing)."""
        start = state["self_k0"].size(2)
        if words.size(1) > 1 and start > 0:
            raise ValueError("several words at once need an empty cache")
        x = self.dropout(self.embed_words(words) + self.positions(start, words.size(1)))  # [B, T, d]
        new_state = {}
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x, new_state[f"self_k{i}"], new_state[f"self_v{i}"], weights = layer(
                x, state[f"self_k{i}"], state[f"self_v{i}"], ctx[f"cross_k{i}"], ctx[f"cross_v{i}"],
                need_weights=i == last)
        return self.final_norm(x), new_state, grid_attention(weights)

    def embed_words(self, words: Tensor) -> Tensor:
        """sqrt(E) W_e E y: [B, T] -> [B, T, d]."""
        return self.word_proj(self.embed(words) * math.sqrt(self.embed.embedding_dim))

    def positions(self, start: int, n: int) -> Tensor:
        """p_t for positions start .. start + n - 1: [n, d]."""
        weight = self.embed.weight
        where = torch.arange(start, start + n, device=weight.device)
        if self.pos_embed is None:
            return sinusoid(where.float(), self.dim).to(weight.dtype)
        return self.pos_embed(where.clamp(max=self.pos_embed.num_embeddings - 1))


class DecoderLayer(nn.Module):
    """One pre-norm layer: masked self-attention, cross-attention over the memory, feed-forward."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.self_norm, self.self_att = nn.LayerNorm(dim), Attention(dim, heads)  # LN_1
        self.cross_norm, self.cross_att = nn.LayerNorm(dim), Attention(dim, heads)  # LN_2
        self.ffn_norm = nn.LayerNorm(dim)  # LN_3
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(), nn.Linear(ffn_dim, dim))  # W_1, W_2
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, past_k: Tensor, past_v: Tensor, cross_k: Tensor, cross_v: Tensor,
                need_weights: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """x [B, T, d] after the cached positions past_k, past_v [B, heads, t, d_h] -> (x [B, T, d], keys and
        values [B, heads, t+T, d_h], cross-attention weights [B, heads, T, L+1] or None)."""
        y = self.self_norm(x)
        k, v = self.self_att.keys_values(y)  # [B, heads, T, d_h]
        k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)  # [B, heads, t+T, d_h]
        out, _ = self.self_att(y, k, v, causal=x.size(1) > 1)
        x = x + self.dropout(out)
        out, weights = self.cross_att(self.cross_norm(x), cross_k, cross_v, need_weights=need_weights)
        x = x + self.dropout(out)
        x = x + self.dropout(self.ffn(self.ffn_norm(x)))
        return x, k, v, weights


class Attention(nn.Module):
    """Multi-head scaled dot-product attention, with the keys and values made separately (so they can be cached)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key_value = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)  # W_O

    def keys_values(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """[B, S, d] -> keys, values [B, heads, S, d_h]."""
        k, v = self.key_value(x).chunk(2, dim=-1)
        return self._split(k), self._split(v)

    def forward(self, x: Tensor, k: Tensor, v: Tensor, causal: bool = False,
                need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """Queries from x [B, T, d] over keys, values [B, heads, S, d_h] -> ([B, T, d], weights [B, heads, T, S]
        or None). ``causal``: query j sees keys 1..j only (T = S)."""
        q = self._split(self.query(x))  # [B, heads, T, d_h]
        weights = None
        if need_weights:
            if causal:
                raise ValueError("attention weights are returned for cross-attention only (no causal mask)")
            weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.size(-1)), dim=-1)  # [B, heads, T, S]
            out = weights @ v  # [B, heads, T, d_h]
        else:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # [B, heads, T, d_h]
        b, h, t, d_h = out.shape
        return self.out(out.transpose(1, 2).reshape(b, t, h * d_h)), weights  # [B, T, d]

    def _split(self, x: Tensor) -> Tensor:
        """[B, S, d] -> [B, heads, S, d_h]."""
        b, s, d = x.shape
        return x.view(b, s, self.heads, d // self.heads).transpose(1, 2)


def grid_attention(weights: Tensor) -> Tensor:
    """Cross-attention weights [B, heads, T, L+1] -> the map over the L grid cells [B, T, L]: the mean over
    heads, without the global slot, renormalised to sum to 1."""
    cells = weights.float().mean(dim=1)[..., :-1]  # [B, T, L]
    return cells / cells.sum(dim=-1, keepdim=True).clamp(min=1e-12)


def sinusoid(where: Tensor, dim: int) -> Tensor:
    """PE(p, 2i) = sin(p / 10000^(2i/dim)), PE(p, 2i+1) = cos(p / 10000^(2i/dim)): [N] -> [N, dim]."""
    freq = torch.exp(torch.arange(0, dim, 2, device=where.device) * (-math.log(10000.0) / dim))  # [ceil(dim/2)]
    angles = where.unsqueeze(1) * freq  # [N, ceil(dim/2)]
    out = torch.zeros(where.size(0), dim, device=where.device)
    out[:, 0::2] = torch.sin(angles)
    out[:, 1::2] = torch.cos(angles[:, : dim // 2])
    return out


def grid_positions(cells: int, dim: int) -> Tensor:
    """P_i for the L grid cells, row-major: half of the d channels encode the row, half the column ([L, d]);
    a grid that is not square gets the 1-D encoding of the cell index."""
    side = math.isqrt(cells)
    index = torch.arange(cells, dtype=torch.float32)
    if side * side != cells:
        return sinusoid(index, dim)
    return torch.cat([sinusoid(index // side, dim // 2), sinusoid(index % side, dim - dim // 2)], dim=1)
