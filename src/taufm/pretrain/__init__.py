"""Pretraining the GPT backbone by next-token prediction on tokenized JetClass jets."""
