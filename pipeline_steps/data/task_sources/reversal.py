"""Reversal-curse data in the files and fields of Berglund et al. (PAPER.md section 8).

Fictitious people with one made-up description each, generated from word lists written for
this project (seeded): names from syllables, descriptions "the <quality> <role> of the <work>
"<Title>"". Three subsets of `people` each: p2d people are only ever shown name -> description
while training, d2p people description -> name, `both` people both ways. Every fact is
trained under `train_paraphrases` prompt templates of its direction and tested under
`test_paraphrases` held-out ones; the reverse tests ask a subset's facts the other way round.

Files (JSONL, {"prompt", "completion"}; the completion starts with a space and ends the
sentence): p2d_prompts_train, d2p_prompts_train, both_prompts_train, p2d_prompts_test,
d2p_prompts_test, p2d_reverse_prompts_test, d2p_reverse_prompts_test, plus all_prompts_train
(the three train files in one). `load_folder` reads a folder of the real files instead.
"""
from __future__ import annotations

import itertools
import random
from pathlib import Path

from pipeline_steps.core.errors import InputError
from pipeline_steps.data.task_sources.items import read_jsonl

REQUIRED = ("p2d_prompts_train", "d2p_prompts_train", "both_prompts_train", "p2d_prompts_test",
            "d2p_prompts_test", "p2d_reverse_prompts_test", "d2p_reverse_prompts_test")
FILES = (*REQUIRED, "all_prompts_train")

_FIRST_START = ("Al", "Bri", "Cor", "Da", "El", "Fen", "Ga", "Hal", "Is", "Jo", "Ka", "Lu",
                "Mar", "Ne", "Or", "Pe", "Ros", "Sa", "Ta", "Ul", "Ve", "Wyn", "Ya", "Ze")
_FIRST_END = ("bel", "dric", "lia", "ndra", "nor", "ra", "ric", "sa", "thea", "vin", "wen",
              "ya", "lo", "mund", "phine", "rett")
_LAST_START = ("Ash", "Bram", "Carr", "Dun", "Ever", "Fal", "Grim", "Hollo", "Ing", "Kest",
               "Lind", "Mor", "Nor", "Pem", "Quill", "Rav", "Stan", "Thorn", "Wex", "Yarl")
_LAST_END = ("by", "combe", "dale", "field", "ford", "hart", "ley", "more", "stead", "ton",
             "well", "wick", "worth", "croft")
_QUALITIES = ("acclaimed", "reclusive", "celebrated", "little-known", "visionary", "eccentric",
              "self-taught", "pioneering", "award-winning", "controversial")
_WORKS = {"director": ("documentary", "silent film", "space opera"),
          "composer": ("symphony", "opera", "song cycle"),
          "author": ("novel", "memoir", "book of riddles"),
          "architect": ("floating library", "glass bridge", "desert observatory"),
          "designer": ("board game", "puzzle video game", "city flag"),
          "founder": ("travelling circus", "seed bank", "lighthouse museum"),
          "host": ("radio show", "cooking podcast", "late-night quiz")}
_TITLE_WORDS = ("Amber", "Atlas", "Cinder", "Copper", "Drift", "Echo", "Ember", "Falcon",
                "Harbor", "Hollow", "Iron", "Juniper", "Lantern", "Marrow", "Meadow", "Nimbus",
                "Orchid", "Quartz", "Raven", "Saffron", "Solace", "Tundra", "Velvet", "Willow")

# Prompt = lead + subject + link; every lead reads before either subject.
_LEADS = ("", "As it happens, ", "Interestingly, ", "Few people know that ", "By all accounts, ",
          "According to the archives, ", "It is widely said that ", "Believe it or not, ")
_P2D_LINKS = ("is", "was once", "is remembered as", "is best known as", "became", "has long been")
_D2P_LINKS = ("is", "was", "goes by the name", "is known to the world as", "turned out to be",
              "is called")
MAX_PARAPHRASES = len(_LEADS) * min(len(_P2D_LINKS), len(_D2P_LINKS))
MAX_PEOPLE = min(len(_FIRST_START) * len(_FIRST_END), len(_LAST_START) * len(_LAST_END),
                 len(_TITLE_WORDS) * (len(_TITLE_WORDS) - 1)) // 3
"""People per subset the word lists can make unique (three subsets)."""


def _names(rng: random.Random, n: int) -> list[str]:
    firsts = ["".join(p) for p in itertools.product(_FIRST_START, _FIRST_END)]
    lasts = ["".join(p) for p in itertools.product(_LAST_START, _LAST_END)]
    # Distinct first and last names: a name never half-matches another person's.
    return [f"{f} {l}" for f, l in zip(rng.sample(firsts, n), rng.sample(lasts, n))]


def _descriptions(rng: random.Random, n: int) -> list[str]:
    titles = [f"{a} {b}" for a, b in itertools.permutations(_TITLE_WORDS, 2)]
    out = []
    for title in rng.sample(titles, n):  # one title per person: descriptions are unique
        role = rng.choice(sorted(_WORKS))
        out.append(f'the {rng.choice(_QUALITIES)} {role} of the {rng.choice(_WORKS[role])} '
                   f'"{title}"')
    return out


def _templates(links: tuple[str, ...], rng: random.Random) -> list[tuple[str, str]]:
    return rng.sample(list(itertools.product(_LEADS, links)), MAX_PARAPHRASES)


def _p2d(name: str, description: str, lead: str, link: str) -> dict:
    return {"prompt": f"{lead}{name} {link}", "completion": f" {description}."}


def _d2p(name: str, description: str, lead: str, link: str) -> dict:
    subject = description if lead else description[0].upper() + description[1:]
    return {"prompt": f"{lead}{subject} {link}", "completion": f" {name}."}


def generate(people: int, train_paraphrases: int, test_paraphrases: int,
             seed: int) -> dict[str, list[dict]]:
    """Every file of FILES as a list of rows, for `people` people per subset."""
    if train_paraphrases + test_paraphrases > MAX_PARAPHRASES or not 0 < people <= MAX_PEOPLE:
        raise ValueError(f"need train + test paraphrases <= {MAX_PARAPHRASES} and "
                         f"0 < people <= {MAX_PEOPLE}")
    rng = random.Random(f"reversal:{seed}")
    facts = list(zip(_names(rng, 3 * people), _descriptions(rng, 3 * people)))
    subsets = {"p2d": facts[:people], "d2p": facts[people:2 * people],
               "both": facts[2 * people:]}
    p2d_templates, d2p_templates = _templates(_P2D_LINKS, rng), _templates(_D2P_LINKS, rng)
    train = {"p2d": p2d_templates[:train_paraphrases], "d2p": d2p_templates[:train_paraphrases]}
    test = {"p2d": p2d_templates[train_paraphrases:train_paraphrases + test_paraphrases],
            "d2p": d2p_templates[train_paraphrases:train_paraphrases + test_paraphrases]}
    make = {"p2d": _p2d, "d2p": _d2p}

    def rows(subset: str, direction: str, templates: list[tuple[str, str]]) -> list[dict]:
        return [make[direction](name, desc, lead, link)
                for name, desc in subsets[subset] for lead, link in templates]

    files = {
        "p2d_prompts_train": rows("p2d", "p2d", train["p2d"]),
        "d2p_prompts_train": rows("d2p", "d2p", train["d2p"]),
        "both_prompts_train": rows("both", "p2d", train["p2d"]) + rows("both", "d2p", train["d2p"]),
        "p2d_prompts_test": rows("p2d", "p2d", test["p2d"]),
        "d2p_prompts_test": rows("d2p", "d2p", test["d2p"]),
        # Reverse: each subset's facts asked the way they were never shown.
        "p2d_reverse_prompts_test": rows("p2d", "d2p", test["d2p"]),
        "d2p_reverse_prompts_test": rows("d2p", "p2d", test["p2d"]),
    }
    return with_all_train(files)


def with_all_train(files: dict[str, list[dict]]) -> dict[str, list[dict]]:
    train = [row for name in ("p2d_prompts_train", "d2p_prompts_train", "both_prompts_train")
             for row in files[name]]
    return {**files, "all_prompts_train": train}


def load_folder(folder: str | Path) -> dict[str, list[dict]]:
    """The real files from a folder (`<name>.jsonl` for each of REQUIRED), checked."""
    folder = Path(folder)
    missing = [n for n in REQUIRED if not (folder / f"{n}.jsonl").is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: missing reversal files {missing}")
    files = {}
    for name in REQUIRED:
        rows = read_jsonl(folder / f"{name}.jsonl")
        if not rows:
            raise InputError(f"{folder / name}.jsonl: empty; expected one JSON object per line, "
                             '{"prompt": ..., "completion": ...}')
        for i, row in enumerate(rows):
            if not (isinstance(row, dict) and isinstance(row.get("prompt"), str)
                    and isinstance(row.get("completion"), str)):
                raise InputError(f"{folder / name}.jsonl row {i + 1}: needs string "
                                 "`prompt` and `completion`")
        files[name] = [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows]
    return with_all_train(files)
