"""The two-stage math format (PAPER.md section 7) as tokens, shared by fine-tuning and evaluation.

    stage 1   BOS + "Question: <q>"                        -> "Answer: <equations>" + EOS
    stage 2   BOS + stage 1's prompt and response tokens   -> "#### <answer>" + EOS

Each piece is encoded on its own (SentencePiece's leading-space marker starts each), so at
evaluation the stage-2 prompt is the stage-1 prompt followed by the GENERATED tokens, the very
layout trained on, never decoded text encoded again (the authors' code re-tokenised it and so
dropped the inner BOS its training rows had).
"""
from __future__ import annotations

import sentencepiece as spm

from pipeline_steps.data.task_sources.math_problems import MARK, parse_line


def question_tokens(sp: spm.SentencePieceProcessor, question: str) -> list[int]:
    """Stage 1's prompt without its BOS."""
    return sp.encode(f"Question: {question}")


def two_stage_rows(sp: spm.SentencePieceProcessor, line: str,
                   where: str) -> tuple[tuple[list[int], list[int]], tuple[list[int], list[int]]]:
    """The (prompt, response) rows of stage 1 and stage 2 of one `question||equations #### answer`
    line (BOS and EOS come from the batch)."""
    question, equations, answer = parse_line(line, where)
    prompt, reasoning = question_tokens(sp, question), sp.encode(f"Answer: {equations}")
    return (prompt, reasoning), (prompt + reasoning, sp.encode(f"{MARK} {answer}"))
