"""Iterative reward-guided MPO: sample, score, pair, train, evaluate, repeat, with guards (docs/rounds.md)."""
