"""Distillation from the back anchor: the stitched model learns the larger model's output distribution.

``loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * label_loss``

(Hinton et al.'s form; ``T^2`` keeps the gradient scale independent of the temperature.) For causal LMs the KL
is averaged over the positions that carry a label (``labels != -100`` after the one-token shift), i.e. the same
tokens the label loss counts; for image classifiers over the examples. The teacher is the back anchor -- the
stitched model shares its head and vocabulary/classes, so the logits line up. The teacher runs in eval mode
under ``no_grad`` on the trainer's device and is never wrapped for DDP (every process holds its own copy).

Both terms are per-batch means, so the trainer declares ``loss_is_scaled_for_ga = False`` (the Trainer divides
by the gradient-accumulation steps) and never rescales by the number of processes.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

from ..errors import HfKlasError
from ..families import CAUSAL_LM
from .trainer import StitchTrainer
from .unwrap import model_task, unwrap_model

__all__ = ["StitchDistillationTrainer", "distillation_loss"]


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 2.0,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
    """``T^2 * mean over (masked) rows of KL(p_teacher^T || p_student^T)``; logits ``[..., classes]``."""
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = (t.exp() * (t - s)).sum(-1)
    if mask is not None:
        mask = mask.to(kl.dtype)
        kl = (kl * mask).sum() / mask.sum().clamp_min(1.0)
    else:
        kl = kl.mean()
    return kl * temperature ** 2


class StitchDistillationTrainer(StitchTrainer):
    """:class:`StitchTrainer` whose loss mixes the label loss with KL to a teacher's logits.

    Args:
        teacher: the teacher model (normally the back anchor, e.g. ``resolve_anchor(back).load_full()``).
        alpha: weight of the distillation term (1.0 = pure distillation, 0.0 = labels only).
        temperature: softmax temperature ``T`` (> 0).
    """

    loss_is_scaled_for_ga = False

    def __init__(self, *args, teacher=None, alpha: float = 0.5, temperature: float = 2.0, **kwargs):
        if teacher is None:
            raise HfKlasError("StitchDistillationTrainer needs a teacher model.",
                              "Pass teacher=<the back anchor loaded with its task class>.")
        if not 0.0 <= alpha <= 1.0:
            raise HfKlasError(f"Distillation alpha={alpha} is outside [0, 1].",
                              "Use e.g. alpha=0.5 (half distillation, half label loss).")
        if not temperature > 0:
            raise HfKlasError(f"Distillation temperature={temperature} must be > 0.", "Use e.g. temperature=2.0.")
        super().__init__(*args, **kwargs)
        self.alpha, self.temperature = float(alpha), float(temperature)
        self.model_accepts_loss_kwargs = False  # our loss is a per-batch mean (see module docstring)
        self.teacher = teacher.to(self.args.device).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self._task = model_task(self.model)
        self._teacher_params = set(inspect.signature(self.teacher.forward).parameters)
        self._check_teacher()

    def _check_teacher(self):
        student = unwrap_model(self.model)
        cfg = getattr(student, "config", None) or getattr(student, "core").config
        tcfg = self.teacher.config
        if self._task == CAUSAL_LM:
            if getattr(tcfg, "vocab_size", None) != cfg.vocab_size:
                raise HfKlasError(f"The teacher's vocabulary ({getattr(tcfg, 'vocab_size', None)}) differs from "
                                  f"the stitched model's ({cfg.vocab_size}).",
                                  "Distil from the back anchor (it shares the stitched model's head).")
        elif getattr(tcfg, "num_labels", None) != cfg.num_labels:
            raise HfKlasError(f"The teacher has {getattr(tcfg, 'num_labels', None)} classes, the stitched model "
                              f"{cfg.num_labels}.", "Distil from the back anchor (it shares the stitched classifier).")

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.get("labels")
        outputs = model(**inputs)
        teacher_inputs = {k: v for k, v in inputs.items() if k != "labels" and k in self._teacher_params}
        with torch.no_grad():
            if self._task == CAUSAL_LM:
                teacher_inputs["use_cache"] = False
            teacher_logits = self.teacher(**teacher_inputs).logits
        student_logits = outputs.logits
        mask = None
        if self._task == CAUSAL_LM:
            if labels is not None:
                mask = labels[:, 1:] != -100
                student_logits, teacher_logits = student_logits[:, :-1], teacher_logits[:, :-1]
            elif inputs.get("attention_mask") is not None:
                mask = inputs["attention_mask"].bool()
        kd = distillation_loss(student_logits, teacher_logits.to(student_logits.device), self.temperature, mask)
        if labels is None or outputs.loss is None:
            loss = kd
        else:
            loss = self.alpha * kd + (1.0 - self.alpha) * outputs.loss
        return (loss, outputs) if return_outputs else loss
