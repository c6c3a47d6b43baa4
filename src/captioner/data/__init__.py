"""Data: caption records, readers for the common annotation formats, vocabulary, synthetic scenes, images."""
