"""Fine-tuning the backbone on the three tau tasks: task definitions, task data, training."""
