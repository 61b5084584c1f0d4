"""What the three training stages (tokenizer, pretraining, fine-tuning) share: device choice,
mixed precision, seeding, checkpoints that resume exactly, and the training history."""
