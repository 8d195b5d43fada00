"""Common corruptions (ImageNet-C, Hendrycks & Dietterich, ICLR 2019).

- names.py: the corruptions, their groups and severities (pure);
- compat.py: imagecorruptions 1.1.2 mended to run on today's stack;
- seeds.py: the per-image seed both backends derive from (seed, image hash, corruption, severity);
- images.py: corrupting one image or an in-memory data set with either backend, deterministically per image;
- torch_backend.py: the 19 corruptions as batched torch ops on CPU or CUDA, following imagecorruptions;
- imagenet_c.py: released ImageNet-C folders, and ImageNet-C generated from clean folders with an on-disk cache;
- suite.py: corruption suites (corruptions/*.toml);
- mce.py: CE, mCE and relative mCE against AlexNet (pure).
The corruption task that evaluates a model on a suite is ellbench.tasks.corruption.
"""
