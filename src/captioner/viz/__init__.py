"""Seeing what a model does: captioned images, per-word attention figures, an HTML evaluation gallery."""
