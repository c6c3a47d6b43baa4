"""Top-down attention with two LSTMs (the "Up-Down" captioner of Anderson et al. 2018, section 3.2), on the
encoder grid instead of object detections (their "ResNet" baseline row uses the same grid features).

Per word t, with annotation vectors v_i (the encoder grid, i = 1..L) and their mean v_bar:
    h1_t  = LSTM_att([h2_{t-1}; v_bar; E y_{t-1}], h1_{t-1})      the attention LSTM (top-down signal)
    alpha = softmax(w^T tanh(W_v v_i + W_h h1_t))                    [B, L]
    v_hat = sum_i alpha_i v_i                                        [B, C]
    h2_t  = LSTM_lang([v_hat; h1_t], h2_{t-1})                       the language LSTM
    p(y_t) = softmax(W_p h2_t)
Both LSTMs start from zeros. Unlike Show, Attend and Tell, attention is computed from the *current* attention
LSTM state, and a second LSTM reads the attended context: a different model family, which is what a
test-time ensemble wants next to soft attention decoders.
"""

import torch
from torch import Tensor, nn

from captioner.decoders.base import Decoder, Features, State


class UpDownDecoder(Decoder):
    has_attention = True

    def __init__(self, vocab_size: int, feature_dim: int, embed_dim: int = 512, hidden_dim: int = 512,
                 attention_dim: int = 512, dropout: float = 0.5, pad_id: int = 0):
        super().__init__(vocab_size, pad_id)
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.att_lstm = nn.LSTMCell(hidden_dim + feature_dim + embed_dim, hidden_dim)
        self.lang_lstm = nn.LSTMCell(feature_dim + hidden_dim, hidden_dim)
        self.att_feat = nn.Linear(feature_dim, attention_dim)  # W_v
        self.att_hidden = nn.Linear(hidden_dim, attention_dim)  # W_h
        self.att_score = nn.Linear(attention_dim, 1)  # w
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden_dim, vocab_size)  # W_p

    def encode(self, feats: Features) -> State:
        grid = feats["grid"]  # [B, L, C]
        return {"grid": grid, "mean": grid.mean(dim=1), "att_proj": self.att_feat(grid)}  # [B, C], [B, L, A]

    def init_state(self, ctx: State) -> State:
        zeros = ctx["grid"].new_zeros(ctx["grid"].size(0), self.att_lstm.hidden_size)  # [B, H]
        return {"h1": zeros, "c1": zeros, "h2": zeros, "c2": zeros}

    def step_logits(self, ctx: State, state: State, prev: Tensor) -> tuple[Tensor, State, Tensor]:
        emb = self.embed(prev)  # [B, E]
        h1, c1 = self.att_lstm(torch.cat([state["h2"], ctx["mean"], emb], dim=1), (state["h1"], state["c1"]))  # [B, H]
        u = torch.tanh(ctx["att_proj"] + self.att_hidden(self.dropout(h1)).unsqueeze(1))  # [B, L, A]
        alpha = torch.softmax(self.att_score(u).squeeze(2), dim=1)  # [B, L]
        v_hat = torch.bmm(alpha.unsqueeze(1), ctx["grid"]).squeeze(1)  # [B, C]
        h2, c2 = self.lang_lstm(torch.cat([v_hat, self.dropout(h1)], dim=1), (state["h2"], state["c2"]))  # [B, H]
        logits = self.fc(self.dropout(h2))  # [B, V]
        return logits, {"h1": h1, "c1": c1, "h2": h2, "c2": c2}, alpha
