"""Tasks: what the user asks for, turned into job specs (the plan) that ellbench.runner executes.

One module per task: eval (clean top-1), attack, corruption, shift (ImageNet-A/R), collapse, profile. Each builds
`runner.JobSpec`s (key, data set, per-batch evaluation, summary) from its suite entries and runs them; the CLI and
the demo call these functions.
"""
