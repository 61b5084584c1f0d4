"""Every nn.Module of taufm: the VQ-VAE tokenizer (vqvae), the GPT backbone (gpt), the task heads
(heads) and the supervised Particle Transformer baseline (part). Stage modules orchestrate; the
networks live here."""
