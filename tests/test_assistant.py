"""``describe_assistant``: the one line chapters 8-10 print to name the chapter-7 assistant they load."""
import torch

from llm_companion.finetune.assistant import describe_assistant, load_assistant, save_assistant
from llm_companion.models.config import GPTConfig
from llm_companion.models.gpt import GPTModel


def _saved(tmp_path, **kwargs):
    torch.manual_seed(0)
    model = GPTModel(GPTConfig.preset("gpt-nano", context_length=32)).eval()
    return load_assistant(save_assistant(model, tmp_path / "assistant", **kwargs))[1]


def test_describe_names_recipe_base_and_reason(tmp_path):
    meta = _saved(tmp_path, base={"name": "standin-books-x", "source": "standin", "local_path": "/x"},
                  notes={"recipe": "LoRA r=16 on every block, mask_prompt=True, lr 0.003, 1 epoch",
                         "chosen_by": "it had the lowest answer-only validation loss of 3 runs"})
    assert describe_assistant(meta) == (
        "LoRA r=16 on every block, mask_prompt=True, lr 0.003, 1 epoch, from standin-books-x; "
        "kept because it had the lowest answer-only validation loss of 3 runs")


def test_describe_without_notes_says_what_is_missing(tmp_path):
    meta = _saved(tmp_path)
    assert describe_assistant(meta) == "tuning recipe not recorded, from unrecorded base weights"
    meta = _saved(tmp_path / "b", base={"weights": "random init"}, notes={"recipe": "full fine-tuning"})
    assert describe_assistant(meta) == "full fine-tuning, from random init"
