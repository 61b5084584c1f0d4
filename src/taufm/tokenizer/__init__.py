"""The VQ-VAE tokenizer stage: preprocessing, training, checks (Fig. 2-3) and tokenization."""
