"""rlaif_jax: RLAIF for small code LLMs, in JAX/Flax."""
__version__ = "0.1.0"
