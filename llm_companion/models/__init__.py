"""The models: configs, attention, GPT and Llama, the KV cache, and the checkpoint formats."""
