"""Knowing When to Look (Lu et al. 2017): spatial attention from the current LSTM state, and adaptive
attention with a visual sentinel.

The grid a_i (i = 1..L) and its mean a_g are projected to the LSTM size d once per image (section 2.4):
    v_i = ReLU(W_a a_i),  v_g = ReLU(W_b a_g)                        V = [v_1 .. v_L]: [B, L, d]
Per word t, with x_t = [E y_{t-1}; v_g]:
    h_t, m_t = LSTM(x_t, (h_{t-1}, m_{t-1}))                          m_t: the memory cell
Spatial attention (section 2.2), computed from the *current* h_t, which the LSTM made without it:
    z_t    = w_h^T tanh(W_v V + (W_g h_t) 1^T)                        [B, L]
    alpha  = softmax(z_t),  c_t = sum_i alpha_i v_i                   [B, L], [B, d]
    p(y_t) = softmax(W_p(c_t + h_t))
Adaptive attention (section 2.3) adds a visual sentinel, the part of the LSTM memory the gate lets out:
    g_t    = sigmoid(W_x x_t + W_h h_{t-1}),  s_t = g_t * tanh(m_t)   [B, d]
    alpha^ = softmax([z_t; w_h^T tanh(W_s s_t + W_g h_t)])            [B, L + 1]
    beta_t = alpha^[L + 1],  c^_t = beta_t s_t + (1 - beta_t) c_t
    p(y_t) = softmax(W_p(c^_t + h_t))
beta_t is how much the word relies on the language model instead of the image.

The attention each step returns is alpha^[1..L] = (1 - beta_t) alpha: the share of the word's attention on
each grid cell. Its sum is 1 - beta_t ("how much it looked"; 1 for spatial attention), so the beam search
keeps beta_t per word with the maps, and ensembles and mirrored maps treat it as any other map.
The LSTM starts from zeros. Dropout acts on the encoder features and on c^_t + h_t before W_p.

How closed the sentinel starts is ``model.sentinel_start`` s, in nats: W_s's bias starts at -b sign(w_h) with
tanh(b) |w_h|_1 = s, so the sentinel's score starts s below the grid cells' (which start near 0) and beta_t at
about e^-s / (L + 1), whatever the attention size k (s is capped at |w_h|_1, about sqrt(k) / 2). Opened from
the start (s = 0), the sentinel takes all the attention in the first few hundred steps, while the language
model is learned and the image features are of no use yet; every gradient of the visual path is then scaled
by 1 - beta_t ~ 0, and the model never learns to look (beta_t = 1 for every word). Closed, the model first
learns where to look, then when it need not. But beta_t's gradient is proportional to beta_t, so closed too
far it never opens: on Flickr8k (frozen EfficientNet-Lite0, k = 512) a start 10.8 nats down ended 10 epochs at
beta_t ~ 1e-8 for every word, the decoder computing spatial attention; 5.2 and 8.6 nats down it opened within
the first epoch (the default is 5). Training logs the mean beta_t as ``train/sentinel`` and warns when an
epoch's mean shows the sentinel shut or taking every word.
"""

import math

import torch
from torch import Tensor, nn

from captioner.decoders.base import Decoder, Features, State


class AdaptiveAttentionDecoder(Decoder):
    has_attention = True

    def __init__(self, vocab_size: int, feature_dim: int, sentinel: bool = True, embed_dim: int = 512,
                 hidden_dim: int = 512, attention_dim: int | None = None, dropout: float = 0.5,
                 sentinel_start: float = 5.0, pad_id: int = 0):
        super().__init__(vocab_size, pad_id)
        self.has_sentinel = sentinel
        attention_dim = attention_dim or hidden_dim  # k in the paper
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.proj_grid = nn.Linear(feature_dim, hidden_dim)  # W_a
        self.proj_global = nn.Linear(feature_dim, hidden_dim)  # W_b
        self.lstm = nn.LSTMCell(embed_dim + hidden_dim, hidden_dim)
        self.att_feat = nn.Linear(hidden_dim, attention_dim)  # W_v
        self.att_hidden = nn.Linear(hidden_dim, attention_dim)  # W_g
        self.att_score = nn.Linear(attention_dim, 1)  # w_h
        if sentinel:
            self.sentinel_gate = nn.Linear(embed_dim + 2 * hidden_dim, hidden_dim)  # [W_x, W_h]
            self.att_sentinel = nn.Linear(hidden_dim, attention_dim)  # W_s
            with torch.no_grad():  # the sentinel's score starts sentinel_start nats down (module docstring)
                w_h = self.att_score.weight[0]  # [k]
                b = math.atanh(min(sentinel_start / float(w_h.abs().sum()), 0.999))
                self.att_sentinel.bias.copy_(-b * w_h.sign())
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden_dim, vocab_size)  # W_p

    def encode(self, feats: Features) -> State:
        grid = self.dropout(feats["grid"])  # [B, L, C]
        v = torch.relu(self.proj_grid(grid))  # V: [B, L, d]
        v_g = torch.relu(self.proj_global(grid.mean(dim=1)))  # [B, d]
        return {"v": v, "v_g": v_g, "att_proj": self.att_feat(v)}  # W_v V: [B, L, k], computed once

    def init_state(self, ctx: State) -> State:
        zeros = ctx["v_g"].new_zeros(ctx["v_g"].shape)  # [B, d]
        return {"h": zeros, "c": zeros}

    def step_logits(self, ctx: State, state: State, prev: Tensor) -> tuple[Tensor, State, Tensor]:
        x = torch.cat([self.embed(prev), ctx["v_g"]], dim=1)  # x_t: [B, E + d]
        h, c = self.lstm(x, (state["h"], state["c"]))  # [B, d]
        s = self.visual_sentinel(x, state["h"], c)  # [B, d] or None
        logits, looks = self.readout(ctx, h.unsqueeze(1), None if s is None else s.unsqueeze(1))  # [B, 1, ...]
        return logits.squeeze(1), {"h": h, "c": c}, looks.squeeze(1)  # [B, V], state, [B, L]

    def visual_sentinel(self, x: Tensor, h_prev: Tensor, c: Tensor) -> Tensor | None:
        """s_t = sigmoid(W_x x_t + W_h h_{t-1}) * tanh(m_t), for any leading shape [.., d]; None without one."""
        if not self.has_sentinel:
            return None
        return torch.sigmoid(self.sentinel_gate(torch.cat([x, h_prev], dim=-1))) * torch.tanh(c)

    def readout(self, ctx: State, h: Tensor, s: Tensor | None) -> tuple[Tensor, Tensor]:
        """Attention and the word distribution for T words at once: h, s [B, T, d] -> (logits [B, T, V],
        alpha^[1..L] [B, T, L])."""
        att_h = self.att_hidden(h)  # W_g h_t: [B, T, k]
        u = torch.tanh(ctx["att_proj"].unsqueeze(1) + att_h.unsqueeze(2))  # [B, T, L, k]
        scores = self.att_score(u).squeeze(3)  # z_t: [B, T, L]
        if s is not None:
            sentinel_score = self.att_score(torch.tanh(self.att_sentinel(s) + att_h))  # [B, T, 1]
            scores = torch.cat([scores, sentinel_score], dim=2)  # [B, T, L + 1]
        alpha_hat = torch.softmax(scores, dim=2)
        looks = alpha_hat[..., : ctx["v"].size(1)]  # (1 - beta_t) alpha: [B, T, L]
        context = torch.matmul(looks, ctx["v"])  # (1 - beta_t) c_t: [B, T, d]
        if s is not None:
            context = context + alpha_hat[..., -1:] * s  # c^_t = beta_t s_t + (1 - beta_t) c_t
        return self.fc(self.dropout(context + h)), looks  # [B, T, V]

    def teacher_forcing(self, feats: Features, captions: Tensor, sample_prob: float = 0.0) -> dict[str, Tensor]:
        """The same computation as calling :meth:`step_logits` word by word, arranged for speed: the LSTM does
        not read the attention, so only the recurrence stays in the loop over words, and attention and the
        output layer run for all words at once. Scheduled sampling takes the plain loop."""
        if sample_prob > 0:
            return super().teacher_forcing(feats, captions, sample_prob)
        ctx = self.encode(feats)
        state = self.init_state(ctx)
        words = captions[:, :-1]  # [B, T]
        x = torch.cat([self.embed(words), ctx["v_g"].unsqueeze(1).expand(-1, words.size(1), -1)], dim=2)
        h, c = state["h"], state["c"]
        hs, cs = [h], []
        for t in range(words.size(1)):
            h, c = self.lstm(x[:, t], (h, c))  # [B, d]
            hs.append(h)
            cs.append(c)
        h_all = torch.stack(hs, 1)  # h_0 .. h_T: [B, T + 1, d]
        s = self.visual_sentinel(x, h_all[:, :-1], torch.stack(cs, 1))  # [B, T, d] or None
        logits, looks = self.readout(ctx, h_all[:, 1:], s)  # [B, T, V], [B, T, L]
        return {"logits": logits, "alphas": looks}

    def extra_losses(self, out: dict, nll: Tensor, mask: Tensor, n_tokens: Tensor) -> dict[str, Tensor]:
        """Logged only: the mean sentinel weight beta_t over the words (``train/sentinel``), to see it open."""
        if not self.has_sentinel:
            return {}
        beta = 1 - out["alphas"].detach().float().sum(-1)  # [B, T]
        return {"log_sentinel": (beta * mask).sum() / n_tokens}
