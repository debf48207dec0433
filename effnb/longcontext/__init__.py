"""Chapter 10: long context on a budget: KV caches with fewer bits (int8/int4, SmoothAttention),
fewer tokens (attention sinks + a sliding window, H2O's heavy hitters), fewer full layers
(LongGen's hybrid), and context extension of the byte models (LongLoRA vs SinkLoRA)."""
