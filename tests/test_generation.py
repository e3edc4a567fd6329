"""Generation: greedy parity with Hugging Face, KV cache vs no cache, sampling filters, errors, context window."""
import pytest
import torch
from conftest import ODD, hf_gpt2

from llm_companion import GPTModel, generate, generate_stream
from llm_companion.inference.generation import filter_logits, next_token
from llm_companion.models.hf_convert import model_from_hf_state_dict


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = GPTModel(ODD).eval()
    with torch.no_grad():  # varied greedy continuations (see test_greedy_matches_hf_generate)
        m.pos_emb.weight.normal_(0.0, 0.5)
    return m


def prompt(batch=1, length=5, seed=0):
    return torch.randint(0, ODD.vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("batch", [1, 2])
def test_greedy_matches_hf_generate(batch):
    hf = hf_gpt2(ODD, seed=7)
    with torch.no_grad():  # small random models repeat one token; big position embeddings vary each step
        hf.transformer.wpe.weight.normal_(0.0, 0.5)
    ours = model_from_hf_state_dict(hf.state_dict(), ODD)
    x = prompt(batch, 6, seed=batch)
    ref = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=32, min_new_tokens=32,
                      do_sample=False, pad_token_id=0)
    out = generate(ours, x, 32)
    assert out.shape == (batch, 38)
    assert torch.equal(out, ref)
    assert len(set(out[0, 6:].tolist())) > 10  # many different argmaxes were compared


def test_cache_equals_no_cache_greedy(model):
    x = prompt(2, 4)
    out = generate(model, x, 50, use_cache=True)
    assert torch.equal(out, generate(model, x, 50, use_cache=False))
    assert len(set(out[0].tolist())) > 10


@pytest.mark.parametrize("kw", [dict(temperature=1.0), dict(temperature=0.8, top_k=10),
                                dict(temperature=1.3, top_p=0.9), dict(temperature=1.0, top_k=20, top_p=0.7)])
def test_cache_equals_no_cache_sampling(model, kw):
    x = prompt(2, 4)
    a = generate(model, x, 40, use_cache=True, generator=torch.Generator().manual_seed(11), **kw)
    b = generate(model, x, 40, use_cache=False, generator=torch.Generator().manual_seed(11), **kw)
    c = generate(model, x, 40, use_cache=True, generator=torch.Generator().manual_seed(12), **kw)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)  # the seed matters, so the equality above is not vacuous


def test_generation_past_the_context_slides_the_window(model):
    x = prompt(1, ODD.context_length - 5)
    cached = generate(model, x, 20, use_cache=True)
    uncached = generate(model, x, 20, use_cache=False)
    assert cached.shape == (1, ODD.context_length + 15)
    assert torch.equal(cached, uncached)


def test_long_prompt_is_truncated_to_the_context(model):
    x = prompt(1, ODD.context_length + 30)
    out = generate(model, x, 5)
    assert torch.equal(out[:, : x.shape[1]], x)  # the whole prompt is returned
    tail = generate(model, x[:, -ODD.context_length:], 5)
    assert torch.equal(out[:, -5:], tail[:, -5:])  # but only its last context_length tokens were seen
    with pytest.raises(ValueError, match="context_length"):
        model(x)  # the model itself refuses


@pytest.mark.parametrize("kw,match", [(dict(temperature=-0.1), "temperature"),
                                      (dict(temperature=1.0, top_k=0), "top_k"),
                                      (dict(temperature=1.0, top_p=0.0), "top_p"),
                                      (dict(temperature=1.0, top_p=1.5), "top_p")])
def test_bad_sampling_arguments_raise(model, kw, match):
    with pytest.raises(ValueError, match=match):
        generate(model, prompt(), 3, **kw)
    with pytest.raises(ValueError, match=match):
        list(generate_stream(model, prompt(), 3, **kw))


def test_bad_prompt_shapes_raise(model):
    with pytest.raises(ValueError, match="non-empty"):
        generate(model, torch.zeros(1, 0, dtype=torch.long), 3)
    with pytest.raises(ValueError, match=r"\(1, T\)"):
        list(generate_stream(model, prompt(2), 3))


def test_stream_yields_the_same_tokens_and_stops_at_eos(model):
    x = prompt()
    full = generate(model, x, 25)[0, 5:].tolist()
    assert list(generate_stream(model, x, 25)) == full
    eos = full[7]
    first = full.index(eos)
    assert list(generate_stream(model, x, 25, eos_id=eos)) == full[:first]
    stopped = generate(model, x, 25, eos_id=eos)
    assert stopped[0, 5:].tolist() == full[: first + 1]


def test_finished_rows_keep_emitting_eos(model):
    x = prompt(2, 5, seed=3)
    free = generate(model, x, 12)
    eos = int(free[0, 5 + 2])  # row 0 emits this at step 2
    out = generate(model, x, 12, eos_id=eos)
    row0 = out[0, 5:].tolist()
    k = row0.index(eos)
    assert all(t == eos for t in row0[k:])


def test_zero_new_tokens_returns_prompt(model):
    x = prompt()
    assert torch.equal(generate(model, x, 0), x)


def test_generation_restores_training_mode(model):
    model.train()
    generate(model, prompt(), 2)
    assert model.training
    model.eval()


def test_filter_logits_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    assert torch.isfinite(filter_logits(logits, top_k=2)).tolist() == [[True, True, False, False, False]]
    # 0.5 alone covers less than 0.6, so 0.2 joins; then 0.7 >= 0.6 and the rest are dropped
    assert torch.isfinite(filter_logits(logits, top_p=0.6)).tolist() == [[True, True, False, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.5)).tolist() == [[True, False, False, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=1.0)).all()
    shuffled = logits[:, [3, 0, 4, 2, 1]]
    assert torch.isfinite(filter_logits(shuffled, top_p=0.6)).tolist() == [[False, True, False, False, True]]


def test_next_token_greedy_and_sampling_distribution():
    logits = torch.tensor([[0.0, 3.0, 1.0]])
    assert next_token(logits).item() == 1
    g = torch.Generator().manual_seed(0)
    draws = torch.cat([next_token(logits, temperature=1.0, generator=g) for _ in range(2000)]).flatten()
    freq = torch.bincount(draws, minlength=3).float() / 2000
    assert torch.allclose(freq, torch.softmax(logits, -1)[0], atol=0.03)
    top1 = torch.cat([next_token(logits, temperature=5.0, top_k=1, generator=g) for _ in range(50)])
    assert (top1 == 1).all()
