"""The baselines the paper compares against (section 6.1), applied per node of the sub-graph:
fine-tuning on retained data, gradient ascent on forget data, and distillation into a fresh student.
Re-training, the gold standard, is ``training.train_graph`` with the forget labels excluded."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from simulations.data import Dataset

from .byom import build
from .training import TrainConfig, distill_loss, fit, node_seed

BASELINES = ("finetune", "gradient_ascent", "distill")


@dataclass(frozen=True)
class BaselineConfig:
    finetune_epochs: int = 5
    ascent_epochs: int = 2
    ascent_lr: float = 1e-3
    distill_epochs: int = 10


def finetune(model: nn.Module, retain_x: Tensor, retain_y: Tensor, *, seed: int, cfg: TrainConfig,
             bcfg: BaselineConfig) -> nn.Module:
    """Continue training on the retained data only, hoping the forgotten classes fade."""
    return fit(copy.deepcopy(model), retain_x, retain_y, bcfg.finetune_epochs, seed=seed, cfg=cfg)


def gradient_ascent(model: nn.Module, forget_x: Tensor, forget_y: Tensor, *, seed: int, cfg: TrainConfig,
                    bcfg: BaselineConfig) -> nn.Module:
    """Maximise the loss on the forget data (negative cross-entropy)."""
    ga_cfg = TrainConfig(model=cfg.model, lr=bcfg.ascent_lr, batch_size=cfg.batch_size)
    return fit(copy.deepcopy(model), forget_x, forget_y, bcfg.ascent_epochs, seed=seed, cfg=ga_cfg,
               loss_fn=lambda logits, y, _idx: -nn.functional.cross_entropy(logits, y))


def distill(model: nn.Module, retain_x: Tensor, retain_y: Tensor, ds: Dataset, *, seed: int,
            cfg: TrainConfig, bcfg: BaselineConfig, node_id: str) -> nn.Module:
    """Distil the original model into a freshly initialised student on the retained data."""
    with torch.no_grad():
        teacher = model.eval()(retain_x) if retain_x.shape[0] else torch.empty(0, ds.num_classes)
    student = build(cfg.model, ds.input_shape, ds.num_classes, seed=node_seed(seed + 1, node_id))
    return fit(student, retain_x, retain_y, bcfg.distill_epochs, seed=seed, cfg=cfg,
               loss_fn=distill_loss(teacher, cfg.distill_temperature))
