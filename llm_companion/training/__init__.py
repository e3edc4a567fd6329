"""Training: the loop, losses, pretraining recipes, data-parallel runs, pretrained weights."""
