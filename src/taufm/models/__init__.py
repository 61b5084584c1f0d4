"""Every nn.Module of taufm: the VQ-VAE tokenizer (and, as stages land, the GPT backbone, task
heads and the ParT baseline). Stage modules orchestrate; the networks live here."""
