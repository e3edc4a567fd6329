"""The SMS Spam Collection: exact parsing, line-numbered errors, balancing, deterministic splits, CSVs."""
import pandas as pd
import pytest

from llm_companion.data.spam import (
    SPLITS,
    SpamDataError,
    balance,
    load_splits,
    plot_class_balance,
    prepare_splits,
    read_sms_collection,
    split,
)


@pytest.fixture(scope="module")
def collection():
    return read_sms_collection()


def test_parses_every_message(collection):
    assert len(collection) == 5574
    assert collection["Label"].value_counts().to_dict() == {"ham": 4827, "spam": 747}
    # the lines a quote-aware CSV reader would merge stay separate messages, quotes included
    assert collection["Text"].str.contains('"').sum() > 0
    assert not collection["Text"].str.contains("\n").any()


def test_naive_read_csv_loses_messages():
    # documents the pitfall the parser avoids
    from llm_companion.data.artifacts import fetch

    assert len(pd.read_csv(fetch("sms-spam"), sep="\t", header=None)) == 5572


def test_malformed_line_names_its_number(tmp_path):
    f = tmp_path / "SMSSpamCollection"
    f.write_text("ham\thello\nspam\tWIN NOW\nthis line has no tab\n")
    with pytest.raises(SpamDataError, match="line 3"):
        read_sms_collection(f)


def test_unknown_label_names_its_number(tmp_path):
    f = tmp_path / "SMSSpamCollection"
    f.write_text("ham\thello\neggs\tnot a label\n")
    with pytest.raises(SpamDataError, match=r"line 2: unknown label 'eggs'"):
        read_sms_collection(f)


def test_empty_message_is_an_error(tmp_path):
    f = tmp_path / "SMSSpamCollection"
    f.write_text("ham\thello\nham\t \n")
    with pytest.raises(SpamDataError, match="line 2: empty message"):
        read_sms_collection(f)


def test_balance_undersamples_ham_deterministically(collection):
    a, b = balance(collection, seed=123), balance(collection, seed=123)
    assert a["Label"].value_counts().to_dict() == {"ham": 747, "spam": 747}
    pd.testing.assert_frame_equal(a, b)
    # every spam message is kept; the ham messages are a subset of the original ones
    assert set(a.loc[a.Label == "spam", "Text"]) == set(collection.loc[collection.Label == "spam", "Text"])
    assert set(a.loc[a.Label == "ham", "Text"]) <= set(collection.loc[collection.Label == "ham", "Text"])
    assert not balance(collection, seed=1).equals(a)


def test_split_sizes_and_determinism(collection):
    df = balance(collection)
    train, val, test = split(df)
    assert (len(train), len(val), len(test)) == (1045, 149, 300)   # 70/10/20 of 1494, as in the book
    again = split(df)
    for x, y in zip((train, val, test), again):
        pd.testing.assert_frame_equal(x, y)
    # a partition: no message lost or duplicated
    merged = pd.concat([train, val, test])
    assert sorted(merged["Text"]) == sorted(df["Text"])
    with pytest.raises(ValueError, match="fractions"):
        split(df, (0.8, 0.3))


def test_prepare_and_load_splits(tmp_path):
    paths = prepare_splits(tmp_path)
    assert {p.name for p in paths.values()} == {"train.csv", "validation.csv", "test.csv"}
    assert not list(tmp_path.glob(".*tmp"))  # no temporary files left behind
    frames = load_splits(tmp_path)
    assert [len(frames[s]) for s in SPLITS] == [1045, 149, 300]
    assert set(frames["train"]["Label"]) == {0, 1}
    assert list(frames["train"].columns) == ["Label", "Text"]
    # the CSV round trip keeps texts exactly (quotes, commas, leading spaces)
    _, _, test = split(balance(read_sms_collection()))
    assert frames["test"]["Text"].tolist() == test["Text"].tolist()
    assert frames["test"]["Label"].tolist() == [("ham", "spam").index(x) for x in test["Label"]]


def test_plot_class_balance(collection):
    fig = plot_class_balance(collection, balance(collection))
    ax = fig.axes[0]
    heights = sorted(int(p.get_height()) for p in ax.patches)
    assert heights == [747, 747, 747, 4827]
    assert ax.get_ylabel() and ax.get_title()
