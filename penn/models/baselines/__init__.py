"""Baseline networks of the seed paper's Table 2 (BASELINES.md §4), plain ``nn.Module``s."""
