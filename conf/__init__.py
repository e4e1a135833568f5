"""penn's Hydra configs as a package, read by the entry points as ``pkg://penn.conf``."""
