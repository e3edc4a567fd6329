"""Running a model: generation, the fast decoding paths, quantized weights, SmolLM2."""
