"""The finetuning recipes hf_klas's evidence is measured with, in one place: ``hf-klas demo`` finetunes every ViT
(anchors and stitches alike) with :data:`VIT_RECIPE`, and the selection study's primary oracle ("demo" protocol)
ranks configurations by it -- so the selector a user is given is judged on the training the user is shown. The
demo's LLM half and the depth-pruning benchmark heal self-stitched LMs (and the dense anchor, for a fair
baseline) with :func:`heal_lora` under :data:`LM_HEAL_RECIPE`."""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, replace

from peft import LoraConfig, get_peft_model
from transformers import TrainingArguments, set_seed

from ..families import family_of
from ..modeling_stitched import StitchedPreTrainedModel
from .finetune import build_trainer
from .lora import merge_lora

__all__ = ["VitRecipe", "VIT_RECIPE", "LmHealRecipe", "LM_HEAL_RECIPE", "finetune_arguments", "finetune_full",
           "heal_lora"]


@dataclass(frozen=True)
class VitRecipe:
    """Full finetuning of a ViT stitch or anchor: every weight, the anchors' weights at ``anchor_lr_scale`` x the
    peak learning rate (1: the back blocks adapt as fast as the stitch, which a few hundred steps need; SN-Net's
    long runs use 0.1), cosine schedule after a 5% warm-up, AdamW without weight decay (transformers' defaults),
    each training image seen once (``steps * batch_size`` images)."""

    learning_rate: float = 1e-3
    anchor_lr_scale: float = 1.0
    steps: int = 600
    batch_size: int = 64
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.05

    def describe(self, steps: int | None = None) -> str:
        steps = self.steps if steps is None else steps
        return (f"{steps} steps of full finetuning (every weight; peak lr {self.learning_rate:g}, anchors at "
                f"{self.anchor_lr_scale:g}x), AdamW, {self.lr_scheduler_type} schedule after "
                f"{self.warmup_ratio:.0%} warm-up, batch {self.batch_size}")

    def to_dict(self) -> dict:
        return asdict(self)


#: The demo's ViT recipe (and the study's primary oracle).
VIT_RECIPE = VitRecipe()


def finetune_arguments(output_dir: str, steps: int, learning_rate: float, batch_size: int, seed: int, *,
                       lr_scheduler_type: str = "cosine", warmup_ratio: float = 0.05) -> TrainingArguments:
    """Quiet, deterministic CPU TrainingArguments of a short finetune (the seed sets init draws and data order).

    The warm-up is passed as ``warmup_steps`` < 1, which transformers reads as a ratio of the steps (the
    ``warmup_ratio`` argument is deprecated in 5.x)."""
    return TrainingArguments(output_dir=output_dir, max_steps=steps, learning_rate=learning_rate,
                             per_device_train_batch_size=batch_size, logging_strategy="no", save_strategy="no",
                             report_to=[], use_cpu=True, seed=seed, data_seed=seed,
                             lr_scheduler_type=lr_scheduler_type, warmup_steps=warmup_ratio,
                             dataloader_num_workers=0, disable_tqdm=True)


def finetune_full(model, args: TrainingArguments, train_dataset, *, anchor_lr_scale: float):
    """Train every weight of ``model`` -- a stitched model (its stitch at the peak lr, the anchors' blocks at
    ``anchor_lr_scale`` x it) or a plain anchor (all its weights are anchor weights) -- so anchors and stitches get
    the same extra training. Returns the trained model in eval mode."""
    if isinstance(model, StitchedPreTrainedModel):
        trainer = build_trainer(model, args, train_dataset, mode="full", anchor_lr_scale=anchor_lr_scale, quiet=True)
    else:
        set_seed(args.seed)
        trainer = build_trainer(model, args, train_dataset, prepare=False, anchor_lr_scale=anchor_lr_scale,
                                quiet=True)
    trainer.train()
    return trainer.model.eval()


@dataclass(frozen=True)
class LmHealRecipe:
    """LoRA healing of a causal LM (a self-stitched one or the dense anchor): rank ``lora_r`` (scaling
    ``lora_alpha``) on every block's attention and MLP projections, the stitch layer fully trained, lr
    ``learning_rate`` after a 5% warm-up (cosine), batch ``batch_size``, ``steps`` steps; with ``distill`` the loss
    mixes the label loss with the KL to the dense model's logits (``distill_alpha`` on the KL, temperature
    ``distill_temperature``)."""

    steps: int = 30
    learning_rate: float = 2e-4
    batch_size: int = 4
    lora_r: int = 16
    lora_alpha: int = 32
    distill: bool = False
    distill_alpha: float = 0.5
    distill_temperature: float = 2.0

    def describe(self) -> str:
        loss = (f"labels + KL to the dense model (alpha {self.distill_alpha:g}, T {self.distill_temperature:g})"
                if self.distill else "labels")
        return (f"{self.steps} LoRA steps (r={self.lora_r}, alpha {self.lora_alpha}, lr {self.learning_rate:g}, "
                f"batch {self.batch_size}, stitch layer trained), loss: {loss}")

    def with_distillation(self, distill: bool = True) -> LmHealRecipe:
        return replace(self, distill=distill)

    def to_dict(self) -> dict:
        return asdict(self)


#: The demo's LLM healing recipe (labels only, 30 steps).
LM_HEAL_RECIPE = LmHealRecipe()


def heal_lora(model, recipe: LmHealRecipe, train_dataset, tokenizer, seed: int, *, teacher=None):
    """LoRA-finetune ``model`` (a stitched causal LM or a plain anchor, so both get the same extra training) with
    ``recipe`` on ``train_dataset`` (prepared by ``prepare_causal_lm_dataset``); ``teacher`` (the dense model) is
    required when ``recipe.distill``. Returns the merged model in eval mode."""
    if recipe.distill and teacher is None:
        raise ValueError("heal_lora: a distillation recipe needs teacher= (the dense model).")
    distill = dict(teacher=teacher, distill_alpha=recipe.distill_alpha,
                   distill_temperature=recipe.distill_temperature) if recipe.distill else {}
    set_seed(seed)  # the LoRA matrices are drawn from the global RNG: the same draw for stitch and anchor
    with tempfile.TemporaryDirectory() as tmp:
        args = finetune_arguments(tmp, recipe.steps, recipe.learning_rate, recipe.batch_size, seed)
        if isinstance(model, StitchedPreTrainedModel):
            trainer = build_trainer(model, args, train_dataset, mode="lora", lora_r=recipe.lora_r,
                                    lora_alpha=recipe.lora_alpha, processing_class=tokenizer, quiet=True, **distill)
            trainer.train()
            return merge_lora(trainer.model).eval()
        targets = list(family_of(model.config).lora_targets)
        peft = get_peft_model(model, LoraConfig(r=recipe.lora_r, lora_alpha=recipe.lora_alpha, lora_dropout=0.0,
                                                target_modules=targets))
        build_trainer(peft, args, train_dataset, prepare=False, processing_class=tokenizer, quiet=True,
                      **distill).train()
        return peft.merge_and_unload().eval()
