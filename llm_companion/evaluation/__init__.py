"""Measuring a language model (chapter 9): log-likelihood scoring, the standard sets, and report cards.

``evaluate(model, tokenizer, tasks)`` returns a JSON-ready report; ``paired_test`` compares two models on
the same items; ``llm-companion eval`` is the command line.
"""
from llm_companion.evaluation.bpb import bits_per_byte
from llm_companion.evaluation.harness import evaluate, model_fingerprint, score_item, score_items, summarize
from llm_companion.evaluation.report import PUBLISHED, markdown_table, write_json
from llm_companion.evaluation.scoring import (
    Score,
    score_batch,
    score_choices,
    score_plain,
    score_texts,
    split_request,
)
from llm_companion.evaluation.stats import (
    bootstrap_ci,
    mcnemar_exact,
    paired_interval,
    paired_test,
    wilson_interval,
)
from llm_companion.evaluation.tasks import (
    BLIMP_PARADIGMS,
    TASKS,
    Item,
    TaskDataError,
    UnknownTaskError,
    load_task,
    select,
)

__all__ = [
    "BLIMP_PARADIGMS", "PUBLISHED", "TASKS", "Item", "Score", "TaskDataError", "UnknownTaskError",
    "bits_per_byte", "bootstrap_ci", "evaluate", "load_task", "markdown_table", "mcnemar_exact", "model_fingerprint",
    "paired_interval", "paired_test", "score_batch", "score_choices", "score_item", "score_items", "score_plain",
    "score_texts", "select", "split_request", "summarize", "wilson_interval", "write_json",
]
