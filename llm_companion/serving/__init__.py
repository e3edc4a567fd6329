"""Serving a model: ``llm-companion serve``, an OpenAI-compatible chat-completions API and an offline chat page.

:class:`Engine` holds one model with its tokenizer and chat template; :func:`create_app` wraps it in a FastAPI
app; :func:`load_engine` builds the engine the command line names (``smollm2``, ``assistant`` or a directory).
FastAPI and uvicorn come with the ``serve`` extra (``pip install -e ".[serve]"``).
"""
from llm_companion.serving.engine import Engine, Outcome, RequestError, Sampling, load_engine

__all__ = ["Engine", "Outcome", "RequestError", "Sampling", "create_app", "load_engine"]


def create_app(engine: Engine, *, api_key: str | None = None):
    """The FastAPI app serving ``engine`` (see :mod:`llm_companion.serving.app`)."""
    from llm_companion.serving.app import create_app as _create_app

    return _create_app(engine, api_key=api_key)
