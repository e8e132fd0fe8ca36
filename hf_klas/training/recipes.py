"""The finetuning recipe hf_klas's evidence is measured with, in one place: ``hf-klas demo`` finetunes every ViT
(anchors and stitches alike) with it, and the selection study's primary oracle ("demo" protocol) ranks
configurations by it -- so the selector a user is given is judged on the training the user is shown."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from transformers import TrainingArguments, set_seed

from ..modeling_stitched import StitchedPreTrainedModel
from .finetune import build_trainer

__all__ = ["VitRecipe", "VIT_RECIPE", "finetune_arguments", "finetune_full"]


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
