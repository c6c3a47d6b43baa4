"""Show, Attend and Tell with soft (deterministic) attention, Xu et al. 2015 section 4.2.

Per word t, with annotation vectors a_i (the encoder grid, i = 1..L) and previous state h_{t-1}:
    e_ti  = w^T tanh(W_a a_i + W_h h_{t-1})          MLP attention (W_a a_i precomputed once per image)
    alpha = softmax(e_t)                              [B, L]
    z_t   = beta_t * sum_i alpha_ti a_i,  beta_t = sigmoid(f_beta(h_{t-1}))   gating scalar (section 4.2.1)
    h_t   = LSTM([E y_{t-1}; z_t], h_{t-1})
    p(y_t) = softmax(L_o tanh(E y_{t-1} + L_h h_t + L_z z_t))               deep output (eq. 7)
h_0, c_0 come from MLPs on the mean annotation vector. Training adds the doubly stochastic regulariser
alpha_c * mean_i (1 - sum_t alpha_ti)^2 so that every location gets attention over the caption.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captioner.decoders.base import Decoder, Features, State


class SoftAttentionDecoder(Decoder):
    has_attention = True

    def __init__(self, vocab_size: int, feature_dim: int, embed_dim: int = 512, hidden_dim: int = 512,
                 attention_dim: int = 512, dropout: float = 0.5, alpha_c: float = 1.0, pad_id: int = 0):
        super().__init__(vocab_size, pad_id)
        self.alpha_c = alpha_c
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.att_feat = nn.Linear(feature_dim, attention_dim)  # W_a
        self.att_hidden = nn.Linear(hidden_dim, attention_dim)  # W_h
        self.att_score = nn.Linear(attention_dim, 1)  # w
        self.init_h = nn.Linear(feature_dim, hidden_dim)
        self.init_c = nn.Linear(feature_dim, hidden_dim)
        self.f_beta = nn.Linear(hidden_dim, 1)
        self.lstm = nn.LSTMCell(embed_dim + feature_dim, hidden_dim)
        self.out_hidden = nn.Linear(hidden_dim, embed_dim)  # L_h
        self.out_context = nn.Linear(feature_dim, embed_dim)  # L_z
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(embed_dim, vocab_size)  # L_o

    def encode(self, feats: Features) -> State:
        grid = feats["grid"]  # [B, L, C]
        return {"grid": grid, "att_proj": self.att_feat(grid)}  # att_proj: [B, L, A], computed once

    def init_state(self, ctx: State) -> State:
        mean = ctx["grid"].mean(dim=1)  # [B, C]
        return {"h": torch.tanh(self.init_h(mean)), "c": torch.tanh(self.init_c(mean))}  # [B, H] each

    def attend(self, ctx: State, h: Tensor) -> Tensor:
        scores = self.att_score(torch.tanh(ctx["att_proj"] + self.att_hidden(h).unsqueeze(1)))  # [B, L, 1]
        return torch.softmax(scores.squeeze(2), dim=1)  # [B, L]

    def context(self, ctx: State, alpha: Tensor, state: State) -> tuple[Tensor, State]:
        """Soft attention: the expected annotation vector under alpha."""
        return torch.bmm(alpha.unsqueeze(1), ctx["grid"]).squeeze(1), state  # [B, C]

    def step_logits(self, ctx: State, state: State, prev: Tensor) -> tuple[Tensor, State, Tensor]:
        h, c = state["h"], state["c"]
        emb = self.embed(prev)  # [B, E]
        alpha = self.attend(ctx, h)  # [B, L]
        z, state = self.context(ctx, alpha, state)  # [B, C]
        z = torch.sigmoid(self.f_beta(h)) * z  # gating scalar beta_t
        h, c = self.lstm(torch.cat([emb, z], dim=1), (h, c))  # [B, H]
        out = torch.tanh(emb + self.out_hidden(h) + self.out_context(z))  # [B, E]
        new_state = {k: v for k, v in state.items() if k not in ("h", "c")}
        new_state.update(h=h, c=c)
        return self.fc(self.dropout(out)), new_state, alpha  # [B, V]

    def teacher_forcing(self, feats: Features, captions: Tensor) -> dict[str, Tensor]:
        """The same computation as calling :meth:`step_logits` word by word, arranged for speed.

        Only attention and the LSTM recurrence stay in the loop over words. Everything else is done for all
        words at once, as a few large matrix products: the word embeddings' share of the LSTM gates, the deep
        output layer and the projection onto the vocabulary (the encoder projection is already in ``ctx``).
        """
        ctx = self.encode(feats)
        state = self.init_state(ctx)
        emb = self.embed(captions[:, :-1])  # [B, T, E]
        n_emb = emb.size(2)
        lstm = self.lstm
        gates_emb = F.linear(emb, lstm.weight_ih[:, :n_emb], lstm.bias_ih + lstm.bias_hh)  # [B, T, 4H]
        w_rec = torch.cat([lstm.weight_ih[:, n_emb:], lstm.weight_hh], dim=1)  # [4H, C + H]
        h, c = state["h"], state["c"]
        hs, zs, alphas, locs = [], [], [], []
        for t in range(emb.size(1)):
            alpha = self.attend(ctx, h)  # [B, L]
            z, state = self.context(ctx, alpha, state)  # [B, C]
            z = torch.sigmoid(self.f_beta(h)) * z
            gates = gates_emb[:, t] + F.linear(torch.cat([z, h], dim=1), w_rec)  # [B, 4H]
            i, f, g, o = gates.chunk(4, dim=1)  # LSTMCell's gate order
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)  # [B, H]
            h = torch.sigmoid(o) * torch.tanh(c)  # [B, H]
            hs.append(h)
            zs.append(z)
            alphas.append(alpha)
            if "loc" in state:
                locs.append(state["loc"])
        hidden, context = torch.stack(hs, 1), torch.stack(zs, 1)  # [B, T, H], [B, T, C]
        out = torch.tanh(emb + self.out_hidden(hidden) + self.out_context(context))  # [B, T, E]
        result = {"logits": self.fc(self.dropout(out)), "alphas": torch.stack(alphas, 1)}  # [B, T, V], [B, T, L]
        if locs:
            result["locs"] = torch.stack(locs, 1)  # [B, T]
        result.update({k: v for k, v in ctx.items() if k.startswith("flag_")})
        return result

    def extra_losses(self, out: dict, nll: Tensor, mask: Tensor, n_tokens: Tensor) -> dict[str, Tensor]:
        alphas = out["alphas"] * mask.unsqueeze(2)  # [B, T, L], padded steps zeroed
        coverage = alphas.sum(dim=1)  # [B, L]
        terms = {"alpha_reg": self.alpha_c * ((1.0 - coverage) ** 2).mean()}
        terms["log_entropy"] = _entropy(out["alphas"], mask, n_tokens).detach()
        return terms


def _entropy(alphas: Tensor, mask: Tensor, n_tokens: Tensor) -> Tensor:
    """Mean attention entropy (nats) over the real (unpadded) words."""
    ent = -(alphas * torch.log(alphas.clamp(min=1e-12))).sum(dim=2)  # [B, T]
    return (ent * mask).sum() / n_tokens
