"""Knowledge distillation: harvest a teacher through an API, train students four ways, evaluate.

Public API (heavy libraries load lazily inside the functions):

- ``harvest.read_prompts``, ``harvest.harvest`` / ``harvest_async`` (HTTP, resumable JSONL),
  ``harvest.harvest_local`` (straight from a ``GenerationEngine``, no HTTP)
- ``trainers.train_student(data, *, mode, out_dir, teacher_dir, student_size, ...)``
  -> ``TrainResult``; modes ``sft`` | ``logit-kd`` | ``topk-kd`` | ``gkd``
- ``evaluate.evaluate_students``, ``evaluate.compare_on_rows``, ``campaign.learning_curve``
- ``losses``: pure divergence functions
"""

from distillguard.distill.harvest import (
    HarvestConfig,
    HarvestRecord,
    HarvestResult,
    LocalHarvestParams,
    Prompt,
    harvest,
    harvest_local,
    read_dataset,
    read_prompts,
)
from distillguard.distill.trainers import MODES, DistillConfig, TrainResult, train_student

__all__ = [
    "MODES",
    "DistillConfig",
    "HarvestConfig",
    "HarvestRecord",
    "HarvestResult",
    "LocalHarvestParams",
    "Prompt",
    "TrainResult",
    "harvest",
    "harvest_local",
    "read_dataset",
    "read_prompts",
    "train_student",
]
