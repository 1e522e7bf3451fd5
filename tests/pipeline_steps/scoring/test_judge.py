"""The sample judge: natural text beats shuffled words, repetition beats both (hence the entropy
guard), batches equal single rows, empty samples, the file's checksum and a missing extra."""
from __future__ import annotations

import math
import random
import shutil
import sys
from importlib.metadata import PackageNotFoundError
from pathlib import Path

import pytest

from pipeline_steps.core.errors import InputError
from pipeline_steps.scoring.judge import (
    INSTALL,
    Judge,
    JudgedText,
    generative_perplexity,
    installed_gguf,
    summary,
    unigram_entropy,
)

# Original prose written for this test (~390 words, ~440 judge tokens).
PROSE = """\
The ferry left the harbour a little after six, when the light was still grey and the gulls were arguing over \
the fish boxes on the quay. Most of the passengers went straight inside to the warm cabin, where a woman behind \
the counter was selling tea in paper cups. I stayed on the open deck with my bag between my feet, because I \
wanted to watch the town get smaller. From the water it looked tidier than it really was: the rows of painted \
houses climbing the hill, the church with its square tower, the old warehouse that nobody had used for twenty \
years.

My grandmother had lived in the blue house near the top of the hill until the previous spring. She kept a \
garden that was far too large for one person, and every summer she complained that the beans had beaten her \
again. When I was a child I spent whole afternoons there, picking peas into a metal bowl and eating more of \
them than I saved. She taught me the names of the birds that came to the feeder and how to tell whether rain \
was coming by the colour of the sky over the island.

After she died, the house was sold to a couple from the city who wanted somewhere quiet for the weekends. I \
had gone back one last time to collect a box of letters that the lawyer had found in the attic. They were tied \
with string and written in a careful, sloping hand that I did not recognise at first. Most of them were from \
my grandfather, sent during the two years he worked on the construction of a dam in the mountains, long \
before my mother was born.

I read the first few on the ferry while the coast slid past. He wrote about the cold, about the men he shared \
a hut with, and about the food, which was always the same. But mostly he wrote about small things he had \
noticed and wanted her to see: a fox crossing the snow at dawn, the sound the river made under the ice, a line \
of lamps along the road at night. By the time we reached the mainland I had stopped reading and was simply \
holding the letters, thinking about how little of a person we ever really know."""


def shuffled(text: str, seed: int = 0) -> str:
    words = text.split()
    random.Random(seed).shuffle(words)
    return " ".join(words)


REPEATED = " ".join(["the old warehouse by the harbour that nobody had used for twenty years."] * 30)
TEXTS = {"natural": PROSE, "shuffled": shuffled(PROSE), "repeated": REPEATED}


def test_entropy_and_perplexity_arithmetic():
    assert unigram_entropy([]) == 0.0 and unigram_entropy([7, 7, 7]) == 0.0
    assert unigram_entropy("a b c d".split()) == pytest.approx(math.log(4))
    assert math.isnan(JudgedText(0.0, 0, 0.0, False).perplexity)
    scores = [JudgedText(10.0, 5, 1.0, False), JudgedText(30.0, 10, 2.0, False), JudgedText(0.0, 0, 0.0, False)]
    ppl, se = generative_perplexity(scores)
    assert ppl == pytest.approx(math.exp(40 / 15))  # pooled over tokens, not a mean of per-text ppls
    # delta method: residuals nll - r * tokens with r = 40/15, samples as units
    r = 40 / 15
    assert se == pytest.approx(ppl * math.sqrt(3 / 2 * ((10 - 5 * r) ** 2 + (30 - 10 * r) ** 2) / 15 ** 2))
    assert all(math.isnan(v) for v in generative_perplexity([JudgedText(0.0, 0, 0.0, False)]))
    assert summary(scores)["judge/entropy"] == pytest.approx(1.0)


def test_a_missing_extra_is_one_line_naming_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now fails
    with pytest.raises(InputError) as err:
        Judge.load(tmp_path / "never-loaded.gguf")  # a path no other test loaded: not cached
    assert "\n" not in str(err.value) and "'.[judge]'" in str(err.value) and INSTALL in str(err.value)


@pytest.fixture(scope="module")
def gguf() -> Path:
    try:
        return installed_gguf()
    except PackageNotFoundError:
        pytest.skip(f"the judge's weights are not installed: {INSTALL}")


@pytest.fixture(scope="module")
def judge(gguf: Path) -> Judge:
    return Judge.load()  # ~14 s, once for the module (and cached for the process)


@pytest.fixture(scope="module")
def batched(judge: Judge) -> dict[str, JudgedText]:
    names = [*TEXTS, "empty", "short"]
    texts = [*TEXTS.values(), "", "Hello there."]
    return dict(zip(names, judge.score(texts, batch_size=8)))


@pytest.mark.slow
def test_natural_text_between_repetition_and_shuffled_words(batched):
    ppl = {name: batched[name].perplexity for name in TEXTS}
    entropy = {name: batched[name].entropy for name in TEXTS}
    assert ppl["repeated"] < ppl["natural"] < ppl["shuffled"], ppl
    assert 10 < ppl["natural"] < 60 and ppl["shuffled"] > 5 * ppl["natural"], ppl  # 27.9 and ~600 measured
    # The guard: repetition wins on perplexity but has far lower unigram entropy; shuffling keeps it.
    assert entropy["repeated"] < entropy["natural"] - 1.5, entropy
    assert entropy["shuffled"] == pytest.approx(entropy["natural"], abs=0.1), entropy


@pytest.mark.slow
def test_a_batch_equals_one_text_at_a_time(judge, batched):
    for name, text in [*TEXTS.items(), ("short", "Hello there.")]:
        alone = judge.score([text], batch_size=1)[0]
        assert alone.tokens == batched[name].tokens
        # bf16 matmuls differ with the batch shape: measured gaps are under 0.1%
        assert alone.nll == pytest.approx(batched[name].nll, rel=5e-3), name


@pytest.mark.slow
def test_an_empty_sample_scores_zero_tokens(judge, batched):
    empty = batched["empty"]
    assert (empty.tokens, empty.nll, empty.entropy, empty.cut) == (0, 0.0, 0.0, False)
    assert judge.score(["", ""]) == [empty, empty]  # nothing to run: no forward pass at all
    assert batched["short"].tokens == 3 and batched["short"].nll > 0


@pytest.mark.slow
def test_a_text_past_the_context_is_cut(judge, monkeypatch, batched):
    monkeypatch.setattr(judge, "context", 65)  # 64 text tokens fit after the start token
    cut, whole = judge.score([PROSE, "Hello there."])
    assert (cut.tokens, cut.cut, whole.cut) == (64, True, False)
    assert whole.nll == pytest.approx(batched["short"].nll, rel=5e-3)


@pytest.mark.slow
def test_a_corrupted_file_is_one_line(tmp_path, gguf):
    copy = tmp_path / gguf.name
    shutil.copyfile(gguf, copy)
    with open(copy, "r+b") as handle:  # flip one byte in the middle
        handle.seek(copy.stat().st_size // 2)
        byte = handle.read(1)
        handle.seek(-1, 1)
        handle.write(bytes([byte[0] ^ 1]))
    with pytest.raises(InputError) as err:
        Judge.load(copy)
    assert "\n" not in str(err.value) and "sha256" in str(err.value) and str(copy) in str(err.value)
