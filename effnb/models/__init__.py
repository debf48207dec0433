"""Models more than one chapter uses (built or loaded offline): the tiny decoder with a KV cache, MiniLM."""
