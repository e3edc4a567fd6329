"""``python -m llm_companion.cli`` (what ``torchrun -m llm_companion.cli pretrain`` runs): the command line."""
import sys

from llm_companion.cli.main import main

sys.exit(main())
