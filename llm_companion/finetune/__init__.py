"""Fine-tuning a pretrained model: classification, instructions, LoRA, preferences."""
