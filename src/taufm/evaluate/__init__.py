"""Evaluating fine-tuned models: test-set physics metrics over runs and seeds, jet embeddings (SPEC §5, §8)."""
