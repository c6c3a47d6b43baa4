"""captioner: classic neural image captioners (Show-and-Tell, Show-Attend-Tell soft/hard), done right."""

__version__ = "0.1.0"
