"""ablate: a hypothesis-testing harness for architecture ablations in computer vision."""
__version__ = "0.1.0"
