import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from llm_companion import GPTConfig, GPTModel
from llm_companion.training.losses import calc_loss_batch, calc_loss_loader, perplexity


@pytest.fixture
def model():
    torch.manual_seed(0)
    return GPTModel(GPTConfig.preset("gpt-nano", vocab_size=50, context_length=8)).eval()


def test_batch_loss_is_mean_negative_log_likelihood_of_targets(model):
    x = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(2))
    logp = torch.log_softmax(model(x), dim=-1)                                    # (B, T, V)
    by_hand = -logp.gather(-1, y[..., None]).mean()
    assert torch.allclose(calc_loss_batch(x, y, model), by_hand, atol=1e-6)


def test_ignore_index_positions_do_not_count(model):
    x = torch.randint(0, 50, (1, 8), generator=torch.Generator().manual_seed(3))
    y = torch.randint(0, 50, (1, 8), generator=torch.Generator().manual_seed(4))
    masked = y.clone()
    masked[0, 4:] = -100
    expected = F.cross_entropy(model(x)[0, :4], y[0, :4])
    assert torch.allclose(calc_loss_batch(x, masked, model), expected, atol=1e-6)


def test_loader_loss_averages_batches_and_respects_num_batches(model):
    g = torch.Generator().manual_seed(5)
    x, y = torch.randint(0, 50, (6, 8), generator=g), torch.randint(0, 50, (6, 8), generator=g)
    loader = DataLoader(TensorDataset(x, y), batch_size=2)
    per_batch = [calc_loss_batch(x[i:i + 2], y[i:i + 2], model).item() for i in (0, 2, 4)]
    assert calc_loss_loader(loader, model) == pytest.approx(sum(per_batch) / 3, abs=1e-6)
    assert calc_loss_loader(loader, model, num_batches=1) == pytest.approx(per_batch[0], abs=1e-6)
    assert math.isnan(calc_loss_loader(DataLoader(TensorDataset(x[:0], y[:0]), batch_size=2), model))


def test_untrained_model_loss_is_near_log_vocab_and_perplexity_is_exp(model):
    g = torch.Generator().manual_seed(6)
    x, y = torch.randint(0, 50, (4, 8), generator=g), torch.randint(0, 50, (4, 8), generator=g)
    loss = calc_loss_batch(x, y, model).item()
    assert abs(loss - math.log(50)) < 0.2  # small init: nearly uniform predictions
    assert perplexity(loss) == pytest.approx(math.exp(loss))
    assert perplexity(torch.tensor(0.0)) == 1.0
