"""LightningModules: greedy pretraining stages and fine-tuning."""
