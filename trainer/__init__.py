"""Training, evaluating and sweeping LoRA adapters (agile classifiers) on labelled examples."""
