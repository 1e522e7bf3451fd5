"""Scoring models on items: the evaluator (and its CLI), the report tables, the lm-eval glue."""
