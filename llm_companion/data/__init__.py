"""The data layer: the artifact registry and downloads, corpora, data sets, tokenizers, GGUF files."""
