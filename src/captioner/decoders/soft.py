"""Show, Attend and Tell with soft (deterministic) attention, Xu et al. 2015 section 4.2.

Per word t, with annotation vectors a_i (the encoder grid, i = 1..L) and previous state h_{t-1}:
    e_ti  = w^T tanh(W_a a_i + W_h h_{t-1})          MLP attention (W_a a_i precomputed once per image)
    alpha = softmax(e_t)                              [B, L]
    z_t   = beta_t * sum_i alpha_ti a_i,  beta_t = sigmoid(f_beta(h_{t-1}))   gating scalar (section 4.2.1)
    h_t   = LSTM([E y_{t-1}; z_t], h_{t-1})
    p(y_t) = softmax(L_o tanh(E y_{t-1} + L_h h_t + L_z z_t))               deep output (eq. 7)
(``deep_output=False``: p(y_t) = softmax(L_o h_t), the plain output layer of the common tutorial code.)
h_0, c_0 come from MLPs on the mean annotation vector. Training adds the doubly stochastic regulariser
alpha_c * mean_i (1 - sum_t alpha_ti)^2 so that every location gets attention over the caption.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captioner.decoders.base import Decoder, Features, State
from captioner.decoders.deferred import DeferredLinear


class SoftAttentionDecoder(Decoder):
    has_attention = True

    def __init__(self, vocab_size: int, feature_dim: int, embed_dim: int = 512, hidden_dim: int = 512,
                 attention_dim: int = 512, dropout: float = 0.5, alpha_c: float = 1.0, deep_output: bool = True,
                 pad_id: int = 0):
        super().__init__(vocab_size, pad_id)
        self.alpha_c = alpha_c
        self.deep_output = deep_output
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.att_feat = nn.Linear(feature_dim, attention_dim)  # W_a
        self.att_hidden = nn.Linear(hidden_dim, attention_dim)  # W_h
        self.att_score = nn.Linear(attention_dim, 1)  # w
        self.init_h = nn.Linear(feature_dim, hidden_dim)
        self.init_c = nn.Linear(feature_dim, hidden_dim)
        self.f_beta = nn.Linear(hidden_dim, 1)
        self.lstm = nn.LSTMCell(embed_dim + feature_dim, hidden_dim)
        if deep_output:
            self.out_hidden = nn.Linear(hidden_dim, embed_dim)  # L_h
            self.out_context = nn.Linear(feature_dim, embed_dim)  # L_z
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(embed_dim if deep_output else hidden_dim, vocab_size)  # L_o

    def encode(self, feats: Features) -> State:
        grid = feats["grid"]  # [B, L, C]
        return {"grid": grid, "att_proj2": 2.0 * self.att_feat(grid)}  # 2 W_a a_i: [B, L, A], computed once

    def init_state(self, ctx: State) -> State:
        mean = ctx["grid"].mean(dim=1)  # [B, C]
        return {"h": torch.tanh(self.init_h(mean)), "c": torch.tanh(self.init_c(mean))}  # [B, H] each

    def attend(self, ctx: State, h: Tensor) -> Tensor:
        """alpha = softmax(w^T tanh(u) + b), u = W_a a_i + W_h h, computed as tanh(u) = 2 sigmoid(2u) - 1.

        The same function: on CPU torch's sigmoid is about 2x faster than its tanh, and this [B, L, A]
        tensor is the largest one made per word (benchmarks/train_step.py; docs/performance.md).
        """
        return self._attend(ctx, self.att_hidden(h))

    def _attend(self, ctx: State, att_h: Tensor) -> Tensor:  # att_h = W_h h: [B, A]
        u2 = ctx["att_proj2"] + 2.0 * att_h.unsqueeze(1)  # 2u: [B, L, A]
        s = torch.sigmoid_(u2)  # in place: autograd needs only the output
        w, b = self.att_score.weight.squeeze(0), self.att_score.bias  # [A], [1]
        scores = 2.0 * (s @ w) - (w.sum() - b)  # w^T (2s - 1) + b: [B, L]
        return torch.softmax(scores, dim=1)  # [B, L]

    def context(self, ctx: State, alpha: Tensor, state: State) -> tuple[Tensor, State]:
        """Soft attention: the expected annotation vector under alpha."""
        return torch.bmm(alpha.unsqueeze(1), ctx["grid"]).squeeze(1), state  # [B, C]

    def step_logits(self, ctx: State, state: State, prev: Tensor) -> tuple[Tensor, State, Tensor]:
        h, c = state["h"], state["c"]
        emb = self.embed(prev)  # [B, E]
        alpha = self.attend(ctx, h)  # [B, L]
        z, state = self.context(ctx, alpha, state)  # [B, C]
        z = torch.sigmoid(self.f_beta(h)) * z  # gating scalar beta_t
        if torch.is_grad_enabled():
            h, c = self.lstm(torch.cat([emb, z], dim=1), (h, c))  # [B, H]
        else:  # decoding: the same LSTM, with the words' share of the gates looked up in a cached table
            gates = self._word_gates()[prev] + F.linear(torch.cat([z, h], dim=1), self._recurrent_weight())
            h, c = _lstm_cell(gates, c)  # [B, H]
        new_state = {k: v for k, v in state.items() if k not in ("h", "c")}
        new_state.update(h=h, c=c)
        return self.fc(self.dropout(self.output(emb, h, z))), new_state, alpha  # [B, V]

    def output(self, emb: Tensor, h: Tensor, z: Tensor) -> Tensor:
        """What L_o projects onto the vocabulary: the deep output tanh(E y + L_h h + L_z z) [.., E], or h [.., H]."""
        if not self.deep_output:
            return h
        return torch.tanh(emb + self.out_hidden(h) + self.out_context(z))

    # ---- decoding-time caches: products of weights only, remade whenever a weight changes ----------
    def _word_gates(self) -> Tensor:
        """E W_ih[:, :E]^T + biases for every word: [V, 4H]. Saves a [B, E] x [E, 4H] product per step."""
        lstm, n_emb = self.lstm, self.embed.embedding_dim
        return self._cached("word_gates", lambda: F.linear(self.embed.weight, lstm.weight_ih[:, :n_emb],
                                                           lstm.bias_ih + lstm.bias_hh),
                            self.embed.weight, lstm.weight_ih, lstm.bias_ih, lstm.bias_hh)

    def _recurrent_weight(self) -> Tensor:
        """[W_ih[:, E:], W_hh]: [4H, C + H], so that z_t and h_{t-1} go through one product."""
        lstm, n_emb = self.lstm, self.embed.embedding_dim
        return self._cached("recurrent", lambda: torch.cat([lstm.weight_ih[:, n_emb:], lstm.weight_hh], dim=1),
                            lstm.weight_ih, lstm.weight_hh)

    def _cached(self, name: str, make, *sources: Tensor) -> Tensor:
        key = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in sources)  # changes on any update
        cache = self.__dict__.setdefault("_decode_cache", {})  # not a buffer: never saved in checkpoints
        if name not in cache or cache[name][0] != key:
            cache[name] = (key, make())
        return cache[name][1]

    def teacher_forcing(self, feats: Features, captions: Tensor, sample_prob: float = 0.0) -> dict[str, Tensor]:
        """The same computation as calling :meth:`step_logits` word by word, arranged for speed.

        Only attention and the LSTM recurrence stay in the loop over words. Everything else is done for all
        words at once, as a few large matrix products: the word embeddings' share of the LSTM gates, the deep
        output layer and the projection onto the vocabulary (the encoder projection is already in ``ctx``).
        Scheduled sampling needs each word's prediction before the next step: it takes the plain loop.
        """
        if sample_prob > 0:
            return super().teacher_forcing(feats, captions, sample_prob)
        ctx = self.encode(feats)
        state = self.init_state(ctx)
        emb = self.embed(captions[:, :-1])  # [B, T, E]
        n_emb = emb.size(2)
        lstm = self.lstm
        gates_emb = F.linear(emb, lstm.weight_ih[:, :n_emb], lstm.bias_ih + lstm.bias_hh)  # [B, T, 4H]
        # the recurrent products; their weight gradients are computed once over all words (deferred.py)
        w_ctx = DeferredLinear(lstm.weight_ih[:, n_emb:])  # z_t -> its share of the gates: [4H, C]
        # everything computed from h_{t-1} in one product: LSTM gates, attention's W_h h, beta's logit
        w_h = DeferredLinear(torch.cat([lstm.weight_hh, self.att_hidden.weight, self.f_beta.weight]))  # [4H+A+1, H]
        b_h = torch.cat([torch.zeros_like(lstm.bias_hh), self.att_hidden.bias, self.f_beta.bias])
        split = [lstm.weight_hh.size(0), self.att_hidden.out_features, 1]
        h, c = state["h"], state["c"]
        hs, zs, alphas, locs = [], [], [], []
        for t in range(emb.size(1)):
            gates_h, att_h, beta = (w_h(h) + b_h).split(split, dim=1)  # [B, 4H], [B, A], [B, 1]
            alpha = self._attend(ctx, att_h)  # [B, L]
            z, state = self.context(ctx, alpha, state)  # [B, C]
            z = torch.sigmoid(beta) * z
            gates = gates_emb[:, t] + gates_h + w_ctx(z)  # [B, 4H]
            h, c = _lstm_cell(gates, c)  # [B, H]
            hs.append(h)
            zs.append(z)
            alphas.append(alpha)
            if "loc" in state:
                locs.append(state["loc"])
        hidden, context = torch.stack(hs, 1), torch.stack(zs, 1)  # [B, T, H], [B, T, C]
        out = self.output(emb, hidden, context)  # [B, T, E] (deep output) or [B, T, H]
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


def _lstm_cell(gates: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """nn.LSTMCell's update from its pre-activations ``gates`` [B, 4H] (gate order i, f, g, o)."""
    i, f, g, o = gates.chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)  # [B, H]
    return torch.sigmoid(o) * torch.tanh(c), c  # h, c: [B, H]


def _entropy(alphas: Tensor, mask: Tensor, n_tokens: Tensor) -> Tensor:
    """Mean attention entropy (nats) over the real (unpadded) words."""
    ent = -(alphas * torch.log(alphas.clamp(min=1e-12))).sum(dim=2)  # [B, T]
    return (ent * mask).sum() / n_tokens
