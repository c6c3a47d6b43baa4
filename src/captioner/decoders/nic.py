"""Show and Tell (Vinyals et al. 2015): the image feature is the LSTM's first input, then the words.

Sequence seen by the LSTM:  [image], <start>, w1, ..., wn
Predicted at each output:   (none),   w1,     w2, ..., <end>
so the output after word t-1 is trained to be word t, and at inference the model is fed its own word t-1.
"""

from torch import Tensor, nn

from captioner.decoders.base import Decoder, Features, State


class NICDecoder(Decoder):
    def __init__(self, vocab_size: int, feature_dim: int, embed_dim: int = 512, hidden_dim: int = 512,
                 dropout: float = 0.5, pad_id: int = 0):
        super().__init__(vocab_size, pad_id)
        self.image_embed = nn.Linear(feature_dim, embed_dim)
        self.image_norm = nn.BatchNorm1d(embed_dim)  # CNN features vary little around a large mean
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.lstm = nn.LSTMCell(embed_dim, hidden_dim)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden_dim, vocab_size)

    def encode(self, feats: Features) -> State:
        return {"image": self.dropout(self.image_norm(self.image_embed(feats["global"])))}  # [B, E]

    def init_state(self, ctx: State) -> State:
        image = ctx["image"]
        zeros = image.new_zeros(image.size(0), self.lstm.hidden_size)  # [B, H]
        h, c = self.lstm(image, (zeros, zeros))  # the image is the input at t = -1; its output is unused
        return {"h": h, "c": c}

    def step_logits(self, ctx: State, state: State, prev: Tensor) -> tuple[Tensor, State, None]:
        x = self.dropout(self.embed(prev))  # [B, E]
        h, c = self.lstm(x, (state["h"], state["c"]))  # [B, H]
        return self.fc(self.dropout(h)), {"h": h, "c": c}, None  # [B, V]

