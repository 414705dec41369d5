"""kdjax: neural architecture search + knowledge distillation of BERT-family students in JAX/Flax."""

__version__ = "0.1.0"
