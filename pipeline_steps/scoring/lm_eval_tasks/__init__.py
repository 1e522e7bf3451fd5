"""Local lm-eval task YAMLs for our evaluation sets (data/tasks/<task>/<split>.jsonl)."""
from pipeline_steps.scoring.lm_eval_tasks.task_yamls import task_config, write_task_yamls

__all__ = ["task_config", "write_task_yamls"]
