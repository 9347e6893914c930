"""Evaluation of any task: models loaded, asked (generation, or the likelihood of a task's fixed choices),
their answers read and scored by the task, and the task's report written (run: `pigg eval`; answers: the
asking; similarity: seed 003's embedding score; speed: `pigg bench-eval`)."""
