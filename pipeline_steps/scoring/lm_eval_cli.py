"""`smdm-lm-eval`: lm-eval's own command line, with our models `smdm_mdm` and `smdm_arm` registered.

lm-eval 0.4.13 finds custom models only in the process that imported them, so this entry point
imports pipeline_steps.scoring.lm_eval_models and then hands sys.argv to `lm_eval.__main__.cli_evaluate`
unchanged: every lm-eval flag works as documented upstream.

    python -m pipeline_steps.scoring.lm_eval_cli --model smdm_mdm --model_args pretrained=PATH \\
        --tasks smdm_arc_easy --include_path DIR --device cpu --batch_size 64 --output_path OUT

`--write_tasks TASKS_DIR OUT_DIR` instead writes one local task YAML per data/tasks/<task> (see
pipeline_steps.scoring.lm_eval_tasks) and prints the task names, so a shell needs no Python to get DIR.
Offline by default: HF_DATASETS_OFFLINE / HF_HUB_OFFLINE are set unless already set, and HF_HOME
falls back to cache/huggingface inside the working directory, so lm-eval never reaches a hub and
never writes outside the project.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path


def offline_environment(project_dir: str | Path = ".") -> None:
    """Keep lm-eval and `datasets` off the network and their caches inside the project."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HOME", str(Path(project_dir).resolve() / "cache" / "huggingface"))


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    offline_environment()  # before lm-eval imports `datasets`, which reads these once
    if args[:1] == ["--write_tasks"]:
        if len(args) != 3:
            sys.exit("usage: smdm-lm-eval --write_tasks TASKS_DIR OUT_DIR")
        from pipeline_steps.scoring.lm_eval_tasks import write_task_yamls

        print("\n".join(write_task_yamls(args[1], args[2])))
        return
    from lm_eval.__main__ import cli_evaluate

    import pipeline_steps.scoring.lm_eval_models  # noqa: F401  (registers smdm_mdm and smdm_arm)

    sys.argv = [sys.argv[0], *args]  # cli_evaluate reads sys.argv itself
    cli_evaluate()


if __name__ == "__main__":
    main()
