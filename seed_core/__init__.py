"""SEED: self-supervised distillation of a frozen teacher into a small student (Fang et al., ICLR 2021)."""

__version__ = "0.1.0"
