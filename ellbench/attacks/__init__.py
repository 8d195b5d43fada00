"""Adversarial attacks: suite files (suite.py), the two protocols around torchattacks (protocol.py), and the pure
arithmetic over finished results (checks.py: budgets, summaries, trust checks), which imports neither torch nor
torchattacks. The attack task that runs suites through the store is ellbench.tasks.attack.
"""
