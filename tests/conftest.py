"""Shared pytest setup: quiet TensorFlow, headless progress bars, and the offline mirror when CI sets it."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("LLM_COMPANION_PROGRESS", "plain")
