"""Classification fine-tuning: padded dataset, new head, freezing, pooling, metrics, training, save/load, CLI."""
import re
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from llm_companion import GPTConfig, GPTModel, gpt2_tokenizer
from llm_companion.finetune.classification import (
    PAD_TOKEN_ID,
    ClassificationDataset,
    ClassifierNotFound,
    EmptyInputError,
    GPTClassifier,
    calc_accuracy_loader,
    calc_classification_loss_loader,
    classify,
    confusion_matrix,
    count_parameters,
    encode_texts,
    load_classifier,
    predict_loader,
    save_classifier,
    set_trainable,
    train_classifier,
)
from llm_companion.plots import plot_classification_history, plot_confusion_matrix

NANO = GPTConfig.preset("gpt-nano")                                  # GPT-2 vocabulary, context 64
TOY = GPTConfig(vocab_size=64, context_length=16, emb_dim=32, n_heads=2, n_layers=2)


@pytest.fixture(scope="module")
def tok():
    return gpt2_tokenizer()


def make_classifier(cfg=NANO, seed=0, **kwargs):
    torch.manual_seed(seed)
    return GPTClassifier(GPTModel(cfg), 2, labels=("ham", "spam"), **kwargs)


# --------------------------------------------------------------------------------------------- data
def test_encode_texts_truncates_and_pads(tok):
    texts = ["Hello, world", "Free entry in a weekly competition to win cup final tickets"]
    ids, lengths = encode_texts(texts, tok, max_length=5)
    assert ids.shape == (2, 5)
    first = tok.encode(texts[0])
    assert lengths.tolist() == [len(first), 5]
    assert ids[0, :len(first)].tolist() == first
    assert (ids[0, len(first):] == PAD_TOKEN_ID).all()
    assert ids[1].tolist() == tok.encode(texts[1])[:5]               # truncation keeps the start
    # without max_length: the longest text decides the width
    ids, lengths = encode_texts(texts, tok)
    assert ids.shape[1] == len(tok.encode(texts[1])) == int(lengths.max())


def test_special_token_text_is_never_the_pad_id(tok):
    ids, lengths = encode_texts(["reply <|endoftext|> now"], tok)
    assert PAD_TOKEN_ID not in ids[0, :lengths[0]].tolist()
    with pytest.raises(EmptyInputError, match="text 1"):
        encode_texts(["fine", ""], tok)


def test_dataset_max_length(tok):
    texts = ["short", "a somewhat longer message than the first one"]
    ds = ClassificationDataset(texts, [0, 1], tok)
    assert ds.max_length == len(tok.encode(texts[1]))
    assert len(ds) == 2 and ds[1][1].item() == 1 and ds[0][0].shape == (ds.max_length,)
    capped = ClassificationDataset(texts, [0, 1], tok, context_length=4)
    assert capped.max_length == 4 and capped.input_ids.shape == (2, 4)
    with pytest.raises(ValueError, match="context_length"):
        ClassificationDataset(texts, [0, 1], tok, max_length=10, context_length=4)
    with pytest.raises(ValueError, match="labels"):
        ClassificationDataset(texts, [0], tok)


# --------------------------------------------------------------------------------------------- model
def test_head_replacement_is_seeded_and_untied():
    gpt = GPTModel(NANO)
    emb_before = gpt.tok_emb.weight.detach().clone()
    rng_before = torch.get_rng_state()
    clf = GPTClassifier(gpt, 2, seed=7)
    assert torch.equal(torch.get_rng_state(), rng_before)            # the global RNG is untouched
    assert clf.gpt.out_head.weight.shape == (2, NANO.emb_dim)
    assert clf.gpt.out_head.weight is not clf.gpt.tok_emb.weight
    assert torch.equal(clf.gpt.tok_emb.weight, emb_before)
    other = GPTClassifier(GPTModel(NANO), 2, seed=7)
    assert torch.equal(clf.gpt.out_head.weight, other.gpt.out_head.weight)
    with pytest.raises(ValueError, match="pooling"):
        GPTClassifier(GPTModel(NANO), pooling="mean")


def trainable_names(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_set_trainable_last_block_norm_head():
    clf = make_classifier()
    counts = set_trainable(clf, 1)
    names = trainable_names(clf)
    last = NANO.n_layers - 1
    assert names and all(n.startswith((f"gpt.blocks.{last}.", "gpt.final_norm.", "gpt.out_head.")) for n in names)
    assert {"gpt.out_head.weight", "gpt.out_head.bias", "gpt.final_norm.weight",
            f"gpt.blocks.{last}.attn.qkv.weight"} <= names
    assert counts.trainable == sum(p.numel() for n, p in clf.named_parameters() if n in names)
    assert counts.trainable + counts.frozen == sum(p.numel() for p in clf.parameters())
    assert count_parameters(clf) == counts

    set_trainable(clf, 0)
    assert trainable_names(clf) == {"gpt.out_head.weight", "gpt.out_head.bias",
                                    "gpt.final_norm.weight", "gpt.final_norm.bias"}
    assert set_trainable(clf, "all").frozen == 0
    blocks = set_trainable(clf, "all-blocks")
    assert trainable_names(clf) == {n for n, _ in clf.named_parameters() if not n.startswith("gpt.tok_emb.")
                                    and not n.startswith("gpt.pos_emb.")}
    assert blocks.frozen == (NANO.vocab_size + NANO.context_length) * NANO.emb_dim
    assert set_trainable(clf, NANO.n_layers) == blocks
    for bad in (-1, NANO.n_layers + 1, "some", True):
        with pytest.raises(ValueError, match="trainable_blocks"):
            set_trainable(clf, bad)


def test_last_real_pooling_reads_the_last_message_token():
    clf = make_classifier().eval()
    ids = torch.tensor([[11, 12, 13, PAD_TOKEN_ID, PAD_TOKEN_ID],
                        [21, 22, 23, 24, 25]])
    with torch.no_grad():
        full = clf.gpt(ids)                                           # (B, T, 2)
        out = clf(ids)
        assert torch.allclose(out[0], full[0, 2], atol=1e-6)          # last real token, not padding
        assert torch.allclose(out[1], full[1, 4], atol=1e-6)
        # padding cannot change the answer: causal attention never looks ahead
        more_padding = torch.cat([ids, torch.full((2, 7), PAD_TOKEN_ID)], dim=1)
        assert torch.allclose(clf(more_padding), out, atol=1e-5)
        clf.pooling = "last"                                          # the reference book's choice
        assert torch.allclose(clf(ids), full[:, -1], atol=1e-6)
        assert not torch.allclose(clf(more_padding)[0], out[0], atol=1e-3)
        clf.pooling = "first"
        assert torch.allclose(clf(ids), full[:, 0], atol=1e-5)


# --------------------------------------------------------------------------------------------- metrics
class FixedLogits(nn.Module):
    """Predicts class 1 exactly when the first token is odd."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, ids):
        odd = (ids[:, 0] % 2).float()
        return torch.stack([1 - odd, odd], dim=-1) * 4.0 - 2.0 + self.dummy


def test_accuracy_and_confusion_on_a_hand_made_case():
    ids = torch.tensor([[1], [2], [3], [4], [5], [6], [7], [8]])
    labels = torch.tensor([1, 0, 1, 0, 0, 0, 1, 1])                  # predictions: 1,0,1,0,1,0,1,0
    loader = DataLoader(TensorDataset(ids, labels), batch_size=3)
    model = FixedLogits()
    assert calc_accuracy_loader(loader, model) == pytest.approx(6 / 8)
    assert calc_accuracy_loader(loader, model, num_batches=1) == pytest.approx(1.0)
    preds, trues = predict_loader(loader, model)
    cm = confusion_matrix(preds, trues, 2)
    assert cm.tolist() == [[3, 1], [1, 3]]                            # rows: true, columns: predicted
    # per-batch mean cross-entropy, averaged over batches; logits are ±2, so right = softplus(-4)
    right, wrong = (float(torch.nn.functional.softplus(torch.tensor(m))) for m in (-4.0, 4.0))
    per_batch = [right, (2 * right + wrong) / 3, (right + wrong) / 2]
    assert calc_classification_loss_loader(loader, model) == pytest.approx(sum(per_batch) / 3)
    fig = plot_confusion_matrix(cm, ["ham", "spam"])
    assert [t.get_text() for t in fig.axes[0].texts] == ["3", "1", "1", "3"]
    assert fig.axes[0].get_xlabel() == "predicted class"


# --------------------------------------------------------------------------------------------- save / load / classify
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    clf = make_classifier(seed=3, max_length=24)
    d = save_classifier(clf, tmp_path_factory.mktemp("clf") / "spam-classifier",
                        base_weights={"name": "random gpt-nano"}, metrics={"test_accuracy": 0.5})
    return clf.eval(), d


def test_save_load_round_trip(saved):
    clf, d = saved
    assert {p.name for p in d.iterdir()} == {"model.safetensors", "config.json", "SHA256SUMS"}
    back = load_classifier(d)
    assert back.labels == ("ham", "spam") and back.max_length == 24 and back.pooling == "last_real"
    assert back.gpt.cfg == NANO and back.base_weights == {"name": "random gpt-nano"}
    ids = torch.randint(0, 50000, (3, 10))
    with torch.no_grad():
        assert torch.equal(back(ids), clf(ids))


def test_missing_classifier_says_how_to_make_one(tmp_path):
    with pytest.raises(ClassifierNotFound, match="06_classification_finetuning"):
        load_classifier(tmp_path / "nothing-here")


def test_classify(saved, tok):
    clf, d = saved
    label, prob = classify("Congratulations! You won a free cruise", clf, tokenizer=tok)
    ids, _ = encode_texts(["Congratulations! You won a free cruise"], tok, 24)
    with torch.no_grad():
        probs = torch.softmax(clf(ids), dim=-1)[0]
    assert label == clf.labels[int(probs.argmax())] and prob == pytest.approx(float(probs.max()))
    assert 0.5 <= prob <= 1.0
    assert classify("Congratulations! You won a free cruise", model_dir=d) == (label, pytest.approx(prob))
    for empty in ("", "   \n"):
        with pytest.raises(EmptyInputError):
            classify(empty, clf, tokenizer=tok)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "llm_companion.cli", "classify", *args],
                          capture_output=True, text=True, timeout=120)


def test_cli(saved):
    clf, d = saved
    ok = run_cli("See you at lunch?", "--model", str(d))
    assert ok.returncode == 0, ok.stderr
    m = re.fullmatch(r"(ham|spam) \(probability (0\.\d{3}|1\.000)\)\n", ok.stdout)
    assert m, ok.stdout
    label, prob = classify("See you at lunch?", clf)
    assert m.group(1) == label and float(m.group(2)) == pytest.approx(prob, abs=5e-4)

    empty = run_cli("", "--model", str(d))
    assert empty.returncode == 2 and empty.stdout == ""
    assert len(empty.stderr.strip().splitlines()) == 1 and "non-empty" in empty.stderr

    missing = run_cli("hello", "--model", str(d.parent / "absent"))
    assert missing.returncode == 2
    assert len(missing.stderr.strip().splitlines()) == 1 and "06_classification_finetuning" in missing.stderr


# --------------------------------------------------------------------------------------------- training
def toy_loader(n, seed, shuffle):
    """Right-padded random messages (pad id 0) whose last token, 5 or 6, is their label (0 or 1)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, TOY.context_length + 1, (n,), generator=g)
    ids = torch.randint(1, TOY.vocab_size, (n, TOY.context_length), generator=g)
    ids[torch.arange(TOY.context_length) >= lengths[:, None]] = 0
    labels = torch.randint(0, 2, (n,), generator=g)
    ids[torch.arange(n), lengths - 1] = 5 + labels
    return DataLoader(TensorDataset(ids, labels), batch_size=16, shuffle=shuffle,
                      generator=torch.Generator().manual_seed(seed) if shuffle else None)


def test_tiny_end_to_end_training_improves_accuracy():
    from llm_companion.training.loop import TrainConfig

    clf = make_classifier(TOY, pad_token_id=0)
    set_trainable(clf, 1)
    frozen_before = clf.gpt.blocks[0].attn.qkv.weight.detach().clone()
    train_loader, val_loader = toy_loader(256, 1, True), toy_loader(64, 2, False)
    before = calc_accuracy_loader(val_loader, clf)
    history = train_classifier(clf, train_loader, val_loader,
                               TrainConfig(epochs=2, lr=1e-2, weight_decay=0.0, eval_every=0, verbose=False))
    after = calc_accuracy_loader(val_loader, clf)
    assert before < 0.75 and after > 0.95, (before, after)
    assert history.metrics["val_accuracy"][-1] == pytest.approx(after)
    assert len(history.metrics["train_accuracy"]) == len(history.epochs) == 2
    assert history.val_loss[-1] < history.val_loss[0]
    assert torch.equal(clf.gpt.blocks[0].attn.qkv.weight, frozen_before)   # frozen stays frozen
    fig = plot_classification_history(history)
    assert [ax.get_ylabel() for ax in fig.axes[:2]] == ["loss (cross-entropy)", "accuracy"]
