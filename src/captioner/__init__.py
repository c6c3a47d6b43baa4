"""captioner: classic neural image captioners (Show and Tell, Show, Attend and Tell with soft and hard attention).

    import captioner
    cap = captioner.load()              # the shipped model; or a model file, several files (an ensemble)
    result = cap("photo.jpg")           # or a PIL image, a numpy array, a tensor, a list of any of these
    print(result.text)                  # result.tokens, result.score, result.attention ([T, g, g] or None)

``captioner.evaluate(model, data, split)`` scores a model on a dataset; ``captioner.train(config, data, out)``
trains one. The ``captioner`` command does the same from a shell.
"""

from captioner.api import evaluate, load, train
from captioner.captioning import Caption, Captioner
from captioner.errors import CaptionerError

__version__ = "0.1.0"
__all__ = ["Caption", "Captioner", "CaptionerError", "evaluate", "load", "train", "__version__"]
