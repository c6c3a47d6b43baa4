"""Decoding: one batched beam search that every decoder serves through its per-step interface."""

from captioner.decoding.beam import Hypothesis, beam_search, beam_search_nbest, greedy_search

__all__ = ["Hypothesis", "beam_search", "beam_search_nbest", "greedy_search"]
