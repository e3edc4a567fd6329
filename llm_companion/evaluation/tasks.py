"""The evaluation sets, each turned into items by one small loader.

Every task reads its files through the artifact registry (sha256-verified; see ``llm_companion.data.artifacts``)
and yields :class:`Item` objects: a context, the choices that may follow it and the index of the right one.
The prompts are lm-evaluation-harness's (its ``hellaswag``, ``arc_easy``, ``arc_challenge``, ``piqa``,
``openbookqa``, ``lambada_openai`` and ``blimp_*`` tasks), so scores compare with the harness's.
"""
from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from llm_companion.data.artifacts import fetch

TASKS = ("blimp", "lambada", "hellaswag", "arc-easy", "arc-challenge", "piqa", "openbookqa", "bpb")

# the 67 BLiMP paradigms, one file each (alexwarstadt/blimp data/*.jsonl)
BLIMP_PARADIGMS = (
    "adjunct_island anaphor_gender_agreement anaphor_number_agreement animate_subject_passive "
    "animate_subject_trans causative complex_NP_island coordinate_structure_constraint_complex_left_branch "
    "coordinate_structure_constraint_object_extraction determiner_noun_agreement_1 determiner_noun_agreement_2 "
    "determiner_noun_agreement_irregular_1 determiner_noun_agreement_irregular_2 "
    "determiner_noun_agreement_with_adj_2 determiner_noun_agreement_with_adj_irregular_1 "
    "determiner_noun_agreement_with_adj_irregular_2 determiner_noun_agreement_with_adjective_1 "
    "distractor_agreement_relational_noun distractor_agreement_relative_clause drop_argument "
    "ellipsis_n_bar_1 ellipsis_n_bar_2 existential_there_object_raising existential_there_quantifiers_1 "
    "existential_there_quantifiers_2 existential_there_subject_raising expletive_it_object_raising "
    "inchoative intransitive irregular_past_participle_adjectives irregular_past_participle_verbs "
    "irregular_plural_subject_verb_agreement_1 irregular_plural_subject_verb_agreement_2 "
    "left_branch_island_echo_question left_branch_island_simple_question "
    "matrix_question_npi_licensor_present npi_present_1 npi_present_2 only_npi_licensor_present "
    "only_npi_scope passive_1 passive_2 principle_A_c_command principle_A_case_1 principle_A_case_2 "
    "principle_A_domain_1 principle_A_domain_2 principle_A_domain_3 principle_A_reconstruction "
    "regular_plural_subject_verb_agreement_1 regular_plural_subject_verb_agreement_2 "
    "sentential_negation_npi_licensor_present sentential_negation_npi_scope sentential_subject_island "
    "superlative_quantifiers_1 superlative_quantifiers_2 tough_vs_raising_1 tough_vs_raising_2 "
    "transitive wh_island wh_questions_object_gap wh_questions_subject_gap "
    "wh_questions_subject_gap_long_distance wh_vs_that_no_gap wh_vs_that_no_gap_long_distance "
    "wh_vs_that_with_gap wh_vs_that_with_gap_long_distance"
).split()


class UnknownTaskError(ValueError):
    """A task name that is not one of :data:`TASKS`."""


class TaskDataError(ValueError):
    """A record in an evaluation file that does not have the fields its task needs."""


@dataclass(frozen=True)
class Item:
    """One test item: ``context`` followed by each of ``choices`` (already with its leading space, as scored);
    ``gold`` indexes the right choice; ``index`` is the item's 0-based line in its file. ``lengths`` are the
    choice lengths acc_norm divides by (lm-eval: characters of the choice text, without the delimiter)."""

    index: int
    context: str
    choices: tuple[str, ...]
    gold: int
    lengths: tuple[int, ...] = ()
    extra: dict = field(default_factory=dict, compare=False)


def check_tasks(names: str | list[str] | tuple[str, ...]) -> list[str]:
    """Task names from a comma list (or ``all``), each checked; raises :class:`UnknownTaskError`."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if list(names) == ["all"]:
        return list(TASKS)
    if not names:
        raise UnknownTaskError(f"no task given; choose from: {', '.join(TASKS)} (or all)")
    for n in names:
        if n not in TASKS:
            raise UnknownTaskError(f"unknown task {n!r}; valid tasks: {', '.join(TASKS)} (or all)")
    return list(names)


def read_jsonl(path: str | Path) -> list[tuple[int, dict]]:
    """``(line index, record)`` for each non-empty line; a line that is not a JSON object names file and line."""
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise TaskDataError(f"{path}:{i + 1}: not valid JSON ({e.msg})") from None
            if not isinstance(rec, dict):
                raise TaskDataError(f"{path}:{i + 1}: expected a JSON object, got {type(rec).__name__}")
            out.append((i, rec))
    return out


def _need(rec: dict, path, i: int, **types) -> None:
    for key, typ in types.items():
        if not isinstance(rec.get(key), typ):
            raise TaskDataError(f"{path}:{i + 1}: field {key!r} missing or not {getattr(typ, '__name__', typ)}")


def _mc(index: int, context: str, choices: list[str], gold: int, path, delimiter: str = " ") -> Item:
    if not 0 <= gold < len(choices):
        raise TaskDataError(f"{path}:{index + 1}: gold index {gold} outside the {len(choices)} choices")
    return Item(index, context, tuple(delimiter + c for c in choices), gold, tuple(len(c) for c in choices))


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's HellaSwag cleanup: WikiHow's ``[title]`` markers become sentence breaks, other brackets go."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def load_hellaswag(path: str | Path) -> list[Item]:
    items = []
    for i, rec in read_jsonl(path):
        _need(rec, path, i, activity_label=str, ctx_a=str, ctx_b=str, endings=list, label=int)
        ctx = rec["ctx_a"] + " " + rec["ctx_b"].capitalize()
        query = hellaswag_preprocess(rec["activity_label"] + ": " + ctx)
        items.append(_mc(i, query, [hellaswag_preprocess(e) for e in rec["endings"]], rec["label"], path))
    return items


def load_qa(path: str | Path, *, template: str = "Question: {question}\nAnswer:") -> list[Item]:
    """ARC and OpenBookQA files (fields ``question, choices, gold``)."""
    items = []
    for i, rec in read_jsonl(path):
        _need(rec, path, i, question=str, choices=list, gold=int)
        items.append(_mc(i, template.format(question=rec["question"]), rec["choices"], rec["gold"], path))
    return items


def load_piqa(path: str | Path, labels: str | Path) -> list[Item]:
    """PIQA: goal + two solutions; the labels sit on the same line of a separate ``.lst`` file."""
    gold = Path(labels).read_text(encoding="utf-8").split("\n")
    items = []
    for i, rec in read_jsonl(path):
        _need(rec, path, i, goal=str, sol1=str, sol2=str)
        if i >= len(gold) or gold[i].strip() not in ("0", "1"):
            raise TaskDataError(f"{labels}:{i + 1}: expected a label 0 or 1 for {path} line {i + 1}")
        items.append(_mc(i, f"Question: {rec['goal']}\nAnswer:", [rec["sol1"], rec["sol2"]],
                         int(gold[i]), path))
    return items


def load_lambada(path: str | Path) -> list[Item]:
    """LAMBADA: the passage without its last word, and that word (one "choice", the target)."""
    items = []
    for i, rec in read_jsonl(path):
        _need(rec, path, i, text=str)
        context, _, word = rec["text"].rpartition(" ")
        if not context:
            raise TaskDataError(f"{path}:{i + 1}: a LAMBADA passage needs at least two words")
        items.append(Item(i, context, (" " + word,), 0, (len(word),)))
    return items


def load_blimp(path: str | Path) -> list[Item]:
    """One BLiMP paradigm: each minimal pair as two whole sentences (choice 0 good, 1 bad) after no context."""
    paradigm = Path(path).name.removesuffix(".jsonl")
    items = []
    for i, rec in read_jsonl(path):
        _need(rec, path, i, sentence_good=str, sentence_bad=str)
        good, bad = rec["sentence_good"], rec["sentence_bad"]
        items.append(Item(i, "", (good, bad), 0, (len(good), len(bad)), {"paradigm": paradigm}))
    return items


def blimp_artifact(paradigm: str) -> str:
    return f"eval-blimp-{paradigm}"


_LOADERS: dict[str, Callable[[], list[Item]]] = {
    "hellaswag": lambda: load_hellaswag(fetch("eval-hellaswag")),
    "arc-easy": lambda: load_qa(fetch("eval-arc-easy")),
    "arc-challenge": lambda: load_qa(fetch("eval-arc-challenge")),
    "openbookqa": lambda: load_qa(fetch("eval-openbookqa"), template="{question}"),
    "piqa": lambda: load_piqa(fetch("eval-piqa"), fetch("eval-piqa-labels")),
    "lambada": lambda: load_lambada(fetch("eval-lambada")),
    "blimp": lambda: [it for p in BLIMP_PARADIGMS for it in load_blimp(fetch(blimp_artifact(p)))],
}


def load_task(name: str) -> list[Item]:
    """Every item of task ``name`` (not ``bpb``, which scores running text)."""
    check_tasks([name])
    if name not in _LOADERS:
        raise UnknownTaskError(f"task {name!r} has no items (it scores running text)")
    return _LOADERS[name]()


def select(items: list[Item], limit: int | None, seed: int = 0, task: str = "") -> list[Item]:
    """``limit`` items chosen by a fixed seeded rule (the same for every model), in file order.

    BLiMP is stratified: each paradigm's items are shuffled with the seed and the paradigms take turns, so
    ``limit`` pairs spread evenly over the 67 paradigms.
    """
    if limit is None or limit >= len(items):
        return list(items)
    if limit <= 0:
        raise ValueError(f"--limit must be a positive number of items, got {limit}")
    rng = random.Random(f"{seed}:{task}")
    groups: dict[str, list[Item]] = {}
    for it in items:
        groups.setdefault(it.extra.get("paradigm", ""), []).append(it)
    for g in groups.values():
        rng.shuffle(g)
    chosen: list[Item] = []
    depth = 0
    while len(chosen) < limit:
        for g in groups.values():
            if depth < len(g) and len(chosen) < limit:
                chosen.append(g[depth])
        depth += 1
    order = {id(it): k for k, it in enumerate(items)}
    return sorted(chosen, key=lambda it: order[id(it)])
