"""Strategies: whole-model references (naive, vmap) and per-layer plans (the rest)."""
