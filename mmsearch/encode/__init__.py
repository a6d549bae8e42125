"""Encoding: images and texts -> unit-norm embeddings (reader -> model -> chunk writer), resumable chunks."""
