"""Training: the ``transformers.Trainer`` subclass and what it trains and writes.

The student, the methods and their trainable parts form one module (:mod:`~hf_distill.training.distillation_model`)
that the trainer (:mod:`~hf_distill.training.trainer`) optimizes; the frozen teacher, a teacher ensemble
(:mod:`~hf_distill.training.ensemble`) or its cached outputs (:mod:`~hf_distill.training.teacher_cache`) stay
outside it. Checkpoints and the exported student are upstream's format (:mod:`~hf_distill.training.checkpoints`,
:mod:`~hf_distill.training.outputs`).
"""
