"""In-domain evaluation tasks that tiny models can beat chance on, from held-out corpus text.

Only the corpus's val split (`val.jsonl`, rows {id, source, year, text}) supplies text, and
val sentences of MIN_SHARED_WORDS+ words that also occur in train.jsonl (repeated passages:
the corpus splits by document) are blocked, so no such sentence was seen in pretraining.
Sources that are not running text (WordNet's lists of glosses, whose "next sentence" is an
unrelated definition) can be skipped. Each document is cut into sentences, and consecutive
sentences into non-overlapping passages of `min_words`..`max_words` words.

- last word (LAMBADA-like): query = the passage without its final word, target = " " + that
  word (trailing punctuation dropped; at least MIN_TARGET_LETTERS letters). With
  `target_in_context` only passages whose final word already occurred in the passage are kept:
  the context makes the word guessable, as LAMBADA's human filter intended, so a small model
  can copy it.
- continuation (multiple choice): query = a passage, choices = " " + the true next sentence
  and distractor sentences of similar length drawn (seeded) from val documents of other
  sources (`other_source`: does the continuation keep the passage's register, which a tiny
  model can judge) or of any other document (`other_document`: which sentence comes next,
  hard even for large models when the register matches).
Item ids are `<group>#<document id>:<k>`, the group being the document id without its source
prefix: one document's items, and a Bible chapter's in both translations, stay on one side of
a held-out split.
"""
from __future__ import annotations

import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline_steps.core.errors import InputError
from pipeline_steps.data.corpus_rows import read_rows, read_texts
from pipeline_steps.data.task_sources.items import greedy_item, mc_item

# A sentence ends at . ! ? (maybe followed by a closing quote or bracket) before a space.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"')\]\u2019\u201d])\s+")
# The passage's final word and whatever punctuation follows it.
_LAST_WORD = re.compile(r"^(?P<head>.*\S)\s+(?P<word>[A-Za-z][A-Za-z'\-]*[A-Za-z]|[A-Za-z])"
                        r"(?P<tail>[^\sA-Za-z0-9]*)$", re.S)
_WORD = re.compile(r"[A-Za-z][A-Za-z'\-]*[A-Za-z]|[A-Za-z]")
# Titles whose full stop does not end a sentence ("Mrs. Bennet"): pieces ending so are rejoined.
_ABBREVIATIONS = ("Mr.", "Mrs.", "Ms.", "Dr.", "St.", "Mt.", "Jr.", "Sr.", "Rev.", "Col.", "Gen.",
                  "Capt.", "Prof.", "vs.", "No.")
MIN_SHARED_WORDS = 4
"""Val sentences this long or longer that also occur in train are never used."""
MIN_TARGET_LETTERS = 3
"""Shorter last words ("a", "it", "is") are too often guessable without the passage."""


@dataclass(frozen=True)
class ValDocument:
    """A val document cut into sentences."""

    id: str
    source: str
    group: str
    """Parallel texts share it: the corpus id without its source prefix (`kjv/Gen.1` and
    `web/Gen.1` are one chapter in two translations)."""
    sentences: tuple[str, ...]
    blocked: frozenset[int] = frozenset()
    """Positions of sentences that also occur in the train split: no item may use them."""


@dataclass(frozen=True)
class Passage:
    """Consecutive sentences of one val document."""

    doc: ValDocument
    index: int
    """Position of the passage's first sentence in its document."""
    length: int
    """Sentences in the passage."""

    @property
    def text(self) -> str:
        return " ".join(self.doc.sentences[self.index:self.index + self.length])

    @property
    def id(self) -> str:
        # The group leads, so items from parallel chapters share a held-out side.
        return f"{self.doc.group}#{self.doc.id}:{self.index}"


def _key(sentence: str) -> int:
    # An in-process hash (never stored), case and spacing folded.
    return hash(" ".join(sentence.lower().split()))


def train_sentence_keys(train_file: Path) -> set[int]:
    """Keys of the train split's sentences of MIN_SHARED_WORDS words or more.

    Repeated text defeats a document split (2 Samuel 22 is Psalm 18 again), so val sentences
    found here are blocked. Shorter sentences ("Amen.", "Oh!") recur everywhere and are free.
    """
    keys: set[int] = set()
    for text in read_texts(train_file):
        for line in text.splitlines():
            keys.update(_key(s) for s in split_sentences(line) if word_count(s) >= MIN_SHARED_WORDS)
    return keys


def read_val_documents(val_file: Path, skip_sources: tuple[str, ...] = (),
                       train_keys: set[int] | None = None) -> list[ValDocument]:
    """Every val document not from `skip_sources`, in file order, train sentences blocked."""
    if not val_file.exists():
        raise FileNotFoundError(f"{val_file}: the corpus val split is missing")
    documents = []
    for row in read_rows(val_file, ("id", "text")):
        if row.get("source") in skip_sources:
            continue
        sentences = tuple(s for line in row["text"].splitlines() for s in split_sentences(line))
        doc_id, source = str(row["id"]), str(row.get("source", ""))
        group = doc_id[len(source) + 1:] if doc_id.startswith(source + "/") else doc_id
        blocked = frozenset(i for i, sentence in enumerate(sentences)
                            if train_keys and _key(sentence) in train_keys)
        if sentences:
            documents.append(ValDocument(doc_id, source, group, sentences, blocked))
    return documents


def split_sentences(line: str) -> list[str]:
    sentences: list[str] = []
    for piece in _SENTENCE_END.split(line.strip()):
        if sentences and sentences[-1].endswith(_ABBREVIATIONS):
            sentences[-1] += " " + piece
        elif piece:
            sentences.append(piece)
    return sentences


def word_count(text: str) -> int:
    return len(text.split())


def passages(doc: ValDocument, min_words: int, max_words: int,
             reserve_next: bool = False) -> Iterator[Passage]:
    """Greedy non-overlapping windows of whole sentences holding min..max words.

    With `reserve_next` a window is only yielded when a following sentence exists (the
    continuation task needs it), and that sentence is not reused by the next window.
    """
    sentences, start = doc.sentences, 0
    while start < len(sentences):
        words, end = 0, start
        while end < len(sentences) and words < min_words:
            words += word_count(sentences[end])
            end += 1
        if words < min_words or (reserve_next and end >= len(sentences)):
            return  # the rest of the document is too short
        used = range(start, end + (1 if reserve_next else 0))
        clash = [i for i in used if i in doc.blocked]
        if clash:
            start = clash[-1] + 1  # restart after the last train sentence in the window
            continue
        if words > max_words:
            start += 1  # an over-long sentence cannot open a passage: move past it
            continue
        yield Passage(doc, start, end - start)
        start = end + (1 if reserve_next else 0)


def lastword_item(passage: Passage, target_in_context: bool) -> dict | None:
    match = _LAST_WORD.match(passage.text)
    if match is None:
        return None
    head, word = match["head"], match["word"]
    if len(word) < MIN_TARGET_LETTERS:
        return None
    if target_in_context and word.lower() not in {w.lower() for w in _WORD.findall(head)}:
        return None
    return greedy_item(passage.id, head, " " + word)


def lastword_items(val_file: Path, n: int, min_words: int, max_words: int,
                   target_in_context: bool, seed: int, skip_sources: tuple[str, ...] = (),
                   train_keys: set[int] | None = None) -> list[dict]:
    """Up to `n` last-word items, a seeded choice among all candidate passages."""
    candidates = []
    for doc in read_val_documents(val_file, skip_sources, train_keys):
        for passage in passages(doc, min_words, max_words):
            item = lastword_item(passage, target_in_context)
            if item is not None:
                candidates.append(item)
    return _choose(candidates, n, f"lastword:{seed}")


DISTRACTORS = ("other_source", "other_document")


def _distractors(pool: list[tuple[str, str]], group: str, answer: str, k: int,
                 rng: random.Random) -> list[str]:
    """`k` distinct sentences from other document groups, of similar length while draws allow.

    `pool` holds (group, sentence) pairs already restricted to eligible sources. Never from
    the passage's own group: a parallel translation's verse would paraphrase the answer.
    Random draws rather than a scan of the pool: the pool is every val sentence.
    """
    length = word_count(answer)
    chosen: list[str] = []
    for attempt in range(50 * k):
        other_group, sentence = pool[rng.randrange(len(pool))]
        # Past half the attempts any length will do, so short documents still yield items.
        similar = attempt >= 25 * k or length / 2 <= word_count(sentence) <= length * 2
        if other_group != group and sentence != answer and sentence not in chosen and similar:
            chosen.append(sentence)
            if len(chosen) == k:
                return chosen
    return []


def continuation_items(val_file: Path, n: int, min_words: int, max_words: int, choices: int,
                       seed: int, skip_sources: tuple[str, ...] = (),
                       train_keys: set[int] | None = None,
                       distractors: str = "other_source") -> list[dict]:
    """Up to `n` next-sentence items with `choices` options each (seeded)."""
    if distractors not in DISTRACTORS:
        raise ValueError(f"in_domain_distractors must be one of {DISTRACTORS}, got {distractors!r}")
    documents = read_val_documents(val_file, skip_sources, train_keys)
    groups = {doc.group for doc in documents}
    if len(groups) < 2:
        raise InputError(f"{val_file}: in_domain_continuation needs val text from >= 2 documents "
                         f"(distractors come from other documents), found {len(groups)} after "
                         f"in_domain_skip_sources={list(skip_sources)}; enlarge the corpus val split")
    sources = sorted({doc.source for doc in documents})
    if distractors == "other_source" and len(sources) < 2:
        raise InputError(f"{val_file}: in_domain_distractors=other_source needs val text from >= 2 "
                         f"sources, found {sources} after in_domain_skip_sources={list(skip_sources)}; "
                         "use other_document or add a source")
    answer_max = max(4, max_words // 2)  # keeps passage + answer under about 1.5 x max_words
    candidates = []
    for doc in documents:
        for passage in passages(doc, min_words, max_words, reserve_next=True):
            answer = doc.sentences[passage.index + passage.length]
            if 4 <= word_count(answer) <= answer_max:
                candidates.append({"id": passage.id, "passage": passage, "answer": answer})
    pools = {source: [(doc.group, s) for doc in documents for i, s in enumerate(doc.sentences)
                      if i not in doc.blocked
                      and (distractors == "other_document" or doc.source != source)]
             for source in sources}
    rng = random.Random(f"continuation:{seed}")
    items = []
    for candidate in _choose(candidates, n, f"continuation-pick:{seed}"):
        passage, answer = candidate["passage"], candidate["answer"]
        wrong = _distractors(pools[passage.doc.source], passage.doc.group, answer, choices - 1, rng)
        if not wrong:
            continue
        options = [answer, *wrong]
        rng.shuffle(options)
        items.append(mc_item(candidate["id"], passage.text, [" " + o for o in options],
                             options.index(answer)))
    return items


def _choose(candidates: list[dict], n: int, salt: str) -> list[dict]:
    """A seeded choice of `n` candidates, in their original (document) order."""
    rng = random.Random(salt)
    chosen = set(rng.sample(range(len(candidates)), min(n, len(candidates))))
    return [item for i, item in enumerate(candidates) if i in chosen]
