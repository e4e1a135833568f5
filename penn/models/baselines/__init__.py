"""Baseline networks of the paper's Table 2 (docs/baseline_networks.md), plain ``nn.Module``s."""
