"""Distributed (torchrun): process environment and the runner that builds an index on every rank."""
