"""What every stage shares: params and profiles, atomic files, tracking, the stage CLI, pinned
packages. Imports nothing else of pipeline_steps."""
