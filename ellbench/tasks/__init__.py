"""Tasks: what the user asks for, turned into job specs (the plan) that ellbench.runner executes.

One module per task: eval (clean top-1 and top-5, timm validate.py's job), attack, corruption, shift (ImageNet-A/R),
collapse, profile; and inputs, which opens the model and its data in the right order (an image folder through the
model's own eval transform). Each task builds `runner.JobSpec`s (key, data set, per-batch evaluation, summary) and
runs them; the CLI and the demo call these functions.
"""
