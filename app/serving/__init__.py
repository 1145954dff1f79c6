"""Serving the classifiers: the handlers (one small module per model family), the inference backends they run on,
the dynamic batcher, checkpoint loading and verification, and the registry that holds them all."""
