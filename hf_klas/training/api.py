"""``hf-klas finetune`` / :func:`run_finetune`: hf_klas's :class:`FinetuneOptions` next to the Trainer's own
``TrainingArguments`` (one parser for both, as transformers' example scripts do).

Three ways to name what to train:

* ``model``: a stitched model directory or Hub id (``save_pretrained`` output);
* ``front`` + ``back`` + ``front_blocks`` + ``back_start``: build the stitch from two anchors first (least-squares
  stitch init on the offline default calibration data);
* ``plan`` (a ``hf-klas select`` output directory, anchors recorded in it): build a stitchable model over the plan's
  candidate set and train it as an SN-Net supernet (KLAS step 5; each step one sampled configuration), written to
  ``output_dir`` as one transformers model that switches configuration at run time -- and, unless
  ``extract_configs=False``, every candidate also as its own stitched model under ``<output_dir>/stitch_i<i>_j<j>``.
  A saved stitchable model given as ``model`` continues its supernet training (its sampler resumes where it stopped).

Datasets: anything :func:`hf_klas.data.get_dataset` takes. Everything is validated (options, columns, labels)
before anything is written. With ``push_to_hub`` the final (merged) model is pushed by the stitched model's own
``push_to_hub`` -- keeping hf_klas's model card -- rather than by the Trainer (which would replace the card and
push every checkpoint).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from transformers import TrainingArguments, set_seed

from ..building import STITCH_INITS, StitchedModel, build_stitchable
from ..calibration import calibration_from_path
from ..data import get_dataset
from ..errors import HfKlasError
from ..families import CAUSAL_LM, task_of
from ..loading import load_stitched_model, preprocessor_for, resolve_anchor
from ..modeling_stitchable import StitchablePreTrainedModel
from ..selection.plan import StitchPlan
from .data import prepare_causal_lm_dataset, prepare_image_dataset
from .finetune import build_trainer
from .lora import merge_lora
from .trainer import MODES
from .unwrap import unwrap_model

__all__ = ["FinetuneOptions", "run_finetune", "save_finetuned", "split_finetune_kwargs", "cli_options"]

SAMPLINGS = ("uniform", "flops")


@dataclass
class FinetuneOptions:
    """hf_klas's options of ``hf-klas finetune`` / :func:`run_finetune`: what to train and on which data.

    How to train (learning rate, steps, batch size, output_dir, seed, checkpoints, resume_from_checkpoint,
    push_to_hub, ...) is ``transformers.TrainingArguments``, parsed next to these options as transformers'
    example scripts do; nothing here repeats one of its fields.
    """

    model: str | None = field(default=None, metadata={
        "help": "Stitched or stitchable model to finetune: a directory written by save_pretrained, or a Hub id (a "
                "stitchable model continues its supernet training)."})
    front: str | None = field(default=None, metadata={
        "help": "Front anchor (alias, Hub id, directory, .gguf) to build the stitch from, when no model is given."})
    back: str | None = field(default=None, metadata={"help": "Back anchor (default: the front anchor itself)."})
    front_blocks: int | None = field(default=None, metadata={"help": "Front blocks i of the stitch to build."})
    back_start: int | None = field(default=None, metadata={"help": "First back block j of the stitch to build."})
    plan: str | None = field(default=None, metadata={
        "help": "A plan directory (hf-klas select): train an SN-Net supernet over its candidates (anchors: the "
                "plan's, unless front/back are given), saved to output_dir as one stitchable model."})
    extract_configs: bool = field(default=True, metadata={
        "help": "With plan: also save every candidate as its own stitched model under <output_dir>/stitch_i<i>_j<j> "
                "(the stitchable model in output_dir holds them all)."})
    stitch_init: str = field(default="least_squares", metadata={
        "help": "Stitch initialisation when building from anchors (also a plan's supernet): least_squares or "
                "identity."})
    calibration: str | None = field(default=None, metadata={
        "help": "Calibration data for the least-squares stitch init: a .txt file (one text per line), a "
                ".json/.jsonl file (text or input_ids column) or a save_to_disk directory; default: the offline "
                "default of hf_klas.calibration."})
    sampling: str = field(default="uniform", metadata={
        "help": "Supernet configuration sampling: uniform (SN-Net) or flops (SN-Netv2: bucket, then config)."})
    dataset: str | None = field(default=None, metadata={
        "help": "Training data: debian_descriptions, fashion_mnist, a .json/.jsonl/.csv/.parquet/.txt file, a "
                "save_to_disk directory, or a Hub dataset name. Default: debian_descriptions for causal LMs, "
                "fashion_mnist for image classifiers."})
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str | None = field(default=None, metadata={"help": "Split to evaluate on after training (optional)."})
    text_column: str = field(default="text", metadata={"help": "Text column (causal LM)."})
    prompt_column: str | None = field(default=None, metadata={
        "help": "Prompt column (causal LM, with target_column; prompt tokens get no loss). debian_descriptions "
                "defaults to prompt/target."})
    target_column: str | None = field(default=None, metadata={"help": "Target column (causal LM)."})
    image_column: str | None = field(default=None, metadata={
        "help": "Image column (pixel_values used as is; image/img through the image processor)."})
    label_column: str | None = field(default=None, metadata={"help": "Label column (labels / label by default)."})
    max_length: int = field(default=256, metadata={"help": "Max tokens per training sequence."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training examples."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N eval examples."})
    mode: str = field(default="stitch", metadata={
        "help": "stitch (only the stitch layer), lora (stitch + LoRA on attention/MLP), full (all; anchors at "
                "anchor_lr_scale x LR)."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int | None = field(default=None, metadata={"help": "LoRA alpha (default 2 x rank)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    lora_target_modules: str | None = field(default=None, metadata={
        "help": "Comma-separated module names (or one regex) for LoRA; default: the family's attention + MLP "
                "projections inside the blocks."})
    merge_lora: bool = field(default=True, metadata={
        "help": "Save the LoRA-merged stitched model in output_dir (the adapter goes to output_dir/adapter)."})
    anchor_lr_scale: float = field(default=0.1, metadata={
        "help": "Learning rate of anchor weights as a fraction of learning_rate (full mode, supernets)."})
    distill: bool = field(default=False, metadata={"help": "Add KL distillation from the back anchor."})
    teacher: str | None = field(default=None, metadata={
        "help": "Teacher for distillation (default: the back anchor recorded in the stitched config)."})
    distill_alpha: float = field(default=0.5, metadata={"help": "Weight of the distillation term in [0, 1]."})
    distill_temperature: float = field(default=2.0, metadata={"help": "Distillation softmax temperature."})
    progress: bool = field(default=True, metadata={
        "help": "hf_klas's own progress bars (least-squares fits, data preparation); the Trainer's follow "
                "--disable_tqdm."})

    def __post_init__(self):
        """Every value is checked here, once, where it enters (API and CLI alike)."""
        if self.mode not in MODES:
            raise HfKlasError(f"Unknown finetuning mode {self.mode!r}.", f"Use one of {', '.join(MODES)}.")
        if self.model and (self.front or self.plan):
            raise HfKlasError("Both model= and front=/plan= were given.",
                              "Pass a stitched model, or anchors (front/back) with front_blocks/back_start or a plan.")
        if not self.model and not self.front and not self.plan:
            raise HfKlasError("Nothing to finetune: no model, no front anchor and no plan.",
                              "Pass model=<stitched model dir>, front/back with front_blocks/back_start, or "
                              "plan=<plan dir>.")
        if self.front and not self.plan and (self.front_blocks is None or self.back_start is None):
            raise HfKlasError("front was given without a stitch point or a plan.",
                              "Pass front_blocks and back_start, or plan=<plan directory> to train all its "
                              "candidates.")
        if self.plan and self.mode == "lora":
            raise HfKlasError("A supernet (plan=) cannot be trained with mode='lora'.",
                              "Use mode='full' (SN-Net) or 'stitch'; LoRA-finetune an extracted stitch afterwards.")
        if self.stitch_init not in STITCH_INITS:
            raise HfKlasError(f"Unknown stitch_init {self.stitch_init!r}.", f"Use one of {', '.join(STITCH_INITS)}.")
        if self.sampling not in SAMPLINGS:
            raise HfKlasError(f"Unknown sampling {self.sampling!r}.", f"Use one of {', '.join(SAMPLINGS)}.")



def save_finetuned(model, output_dir, recipe: dict | None = None, merge: bool = True, preprocessor=None,
                   is_main_process: bool = True) -> dict:
    """Save a finetuned stitched model (LoRA: adapter to ``output_dir/adapter``, merged model to ``output_dir``).

    Returns ``{"model_dir": ..., "adapter_dir": ...}``; the returned model (merged when LoRA) is under ``"model"``.
    """
    output_dir = Path(output_dir)
    out: dict = {"model_dir": str(output_dir), "adapter_dir": None}
    final = model
    if hasattr(model, "merge_and_unload"):
        adapter_dir = output_dir / "adapter"
        model.save_pretrained(str(adapter_dir), is_main_process=is_main_process)
        out["adapter_dir"] = str(adapter_dir)
        if not merge:
            out["model"] = model
            return out
        final = merge_lora(model)
    final = unwrap_model(final)
    if recipe:
        final.config.recipe = {**(final.config.recipe or {}), "finetune": recipe}
    if preprocessor is not None and getattr(final, "preprocessor", None) is None:
        final.preprocessor = preprocessor
    final.save_pretrained(str(output_dir), is_main_process=is_main_process)
    out["model"] = final
    return out


def _targets(value: str | None):
    if value is None:
        return None
    parts = [p.strip() for p in value.split(",") if p.strip()]
    return parts[0] if len(parts) == 1 and any(ch in parts[0] for ch in "\\^$*+?[]()|") else parts


def _prepare_data(opts, model, preprocessor, split, limit):
    task = task_of(model)
    cfg = model.config
    name = opts.dataset or ("debian_descriptions" if task == CAUSAL_LM else "fashion_mnist")
    ds = get_dataset(name, split, opts.dataset_config, limit=limit)
    if task == CAUSAL_LM:
        prompt, target = opts.prompt_column, opts.target_column
        if name == "debian_descriptions" and prompt is None and target is None:
            prompt, target = "prompt", "target"
        return prepare_causal_lm_dataset(ds, preprocessor, text_column=opts.text_column, prompt_column=prompt,
                                         target_column=target, max_length=opts.max_length, vocab_size=cfg.vocab_size)
    return prepare_image_dataset(ds, cfg.num_labels, preprocessor, image_column=opts.image_column,
                                 label_column=opts.label_column)


def _load_teacher(opts, model):
    cfg = model.config
    spec = opts.teacher or ((cfg.anchors or {}).get("back") or {}).get("name_or_path")
    if not spec:
        raise HfKlasError("Distillation needs a teacher, and the stitched config records no back anchor.",
                          "Pass teacher=<the back anchor: alias, Hub id or directory>.")
    try:
        return resolve_anchor(spec).load_full()
    except HfKlasError as err:
        raise HfKlasError(f"Could not load the distillation teacher {spec!r}: {err.cause}",
                          "Pass teacher=<the back anchor: alias, Hub id or directory>.") from err


def plan_anchors(plan_dir, front=None, back=None) -> tuple[str, str | None]:
    """The anchors to build a plan's stitches from: the ones given, else the ones the plan records
    (``back`` None = self-stitching)."""
    plan = StitchPlan.load(plan_dir)
    if front is None:
        front = plan.front.name_or_path
        if back is None and not plan.extra.get("self_stitching"):
            back = plan.back.name_or_path
    return front, back


def split_finetune_kwargs(kwargs: dict) -> tuple[dict, dict]:
    """Keyword arguments -> (FinetuneOptions fields, TrainingArguments fields); an unknown name is refused."""
    own = {f.name for f in fields(FinetuneOptions)}
    trainer = {f.name for f in fields(TrainingArguments)}
    unknown = sorted(set(kwargs) - own - trainer)
    if unknown:
        raise HfKlasError(f"run_finetune got unknown option(s) {unknown}.",
                          "Use FinetuneOptions fields (what to train) or TrainingArguments fields (how to train).")
    return ({k: v for k, v in kwargs.items() if k in own}, {k: v for k, v in kwargs.items() if k in trainer})


def run_finetune(opts: FinetuneOptions | None = None, training_args: TrainingArguments | None = None,
                 **kwargs) -> dict:
    """``hf-klas finetune``: train, save (and push); returns a JSON-able summary.

    ``kwargs`` may mix both kinds of options (``run_finetune(model=..., mode="full", max_steps=2)``); they
    override ``opts`` / ``training_args``.
    """
    own, trainer_kw = split_finetune_kwargs(kwargs)
    opts = replace(opts, **own) if opts is not None else FinetuneOptions(**own)
    if training_args is None:
        training_args = TrainingArguments(**trainer_kw)
    elif trainer_kw:
        training_args = replace(training_args, **trainer_kw)
    t0 = time.perf_counter()
    push, hub_model_id = training_args.push_to_hub, training_args.hub_model_id
    if push:  # the stitched model pushes itself at the end (our model card, one commit), not the Trainer
        training_args = replace(training_args, push_to_hub=False)
    output_dir = training_args.output_dir
    set_seed(training_args.seed)
    calibration = calibration_from_path(opts.calibration)
    # ---- model ----------------------------------------------------------------------------------------------
    if opts.plan:
        front, back = plan_anchors(opts.plan, opts.front, opts.back)
        model = build_stitchable(front, back, plan=opts.plan, calibration=calibration, stitch_init=opts.stitch_init,
                                 sampling=opts.sampling, seed=training_args.seed, progress=opts.progress)
        preprocessor = preprocessor_for(model)
    elif opts.model:
        model = load_stitched_model(opts.model)
        preprocessor = preprocessor_for(model, opts.model)
        if isinstance(model, StitchablePreTrainedModel) and opts.mode == "lora":
            raise HfKlasError(f"{opts.model} is a stitchable model; hf-klas finetune trains it as a supernet "
                              "(mode='full' or 'stitch'), not with LoRA.",
                              "Use mode='full' or 'stitch', or LoRA-finetune one configuration: "
                              "model.extract(i, j).save_pretrained(dir), then hf-klas finetune --model dir.")
    else:
        model = StitchedModel.from_anchors(opts.front, opts.back, opts.front_blocks, opts.back_start,
                                           calibration=calibration, stitch_init=opts.stitch_init,
                                           progress=opts.progress)
        preprocessor = preprocessor_for(model)
    # ---- data (validated before anything is written) ----------------------------------------------------------
    train_ds = _prepare_data(opts, model, preprocessor, opts.train_split, opts.max_train_samples)
    eval_ds = (_prepare_data(opts, model, preprocessor, opts.eval_split, opts.max_eval_samples)
               if opts.eval_split else None)
    teacher = _load_teacher(opts, model) if opts.distill else None
    mode = opts.mode
    trainer = build_trainer(model, training_args, train_ds, eval_ds, mode=mode, lora_r=opts.lora_r,
                            lora_alpha=opts.lora_alpha, lora_dropout=opts.lora_dropout,
                            lora_target_modules=_targets(opts.lora_target_modules),
                            anchor_lr_scale=opts.anchor_lr_scale, teacher=teacher, distill_alpha=opts.distill_alpha,
                            distill_temperature=opts.distill_temperature, processing_class=preprocessor)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in trainer.model.parameters())
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    metrics = dict(result.metrics)
    if eval_ds is not None:
        metrics.update(trainer.evaluate())
    recipe = {"mode": mode, "learning_rate": training_args.learning_rate, "anchor_lr_scale": opts.anchor_lr_scale,
              "steps": int(result.global_step), "dataset": opts.dataset or "default", "seed": training_args.seed,
              "train_loss": float(result.training_loss)}
    if mode == "lora":
        recipe.update({"lora_r": opts.lora_r, "lora_alpha": opts.lora_alpha or 2 * opts.lora_r})
    if opts.distill:
        recipe.update({"distill_alpha": opts.distill_alpha, "distill_temperature": opts.distill_temperature})
    summary = {"output_dir": output_dir, "mode": mode, "global_step": int(result.global_step),
               "train_loss": float(result.training_loss), "metrics": metrics, "trainable_parameters": trainable,
               "total_parameters": total}
    main = trainer.args.should_save
    stitchable = isinstance(model, StitchablePreTrainedModel)
    if stitchable and model.config.sampling is not None:
        model.config.recipe["training"] = "supernet"
    saved = save_finetuned(trainer.model, output_dir, recipe=recipe, merge=opts.merge_lora,
                           preprocessor=preprocessor, is_main_process=main)
    summary.update({"model_dir": saved["model_dir"], "adapter_dir": saved["adapter_dir"]})
    if stitchable:
        summary.update({"supernet_dir": saved["model_dir"], "configs": [list(c) for c in model.config.stitches],
                        "models": _save_extracted(model, output_dir, main) if opts.plan and opts.extract_configs
                        else []})
    if push and main:
        repo = hub_model_id or Path(output_dir).name
        saved["model"].push_to_hub(repo)
        summary["pushed_to"] = repo
    summary["seconds"] = time.perf_counter() - t0
    summary["options"] = asdict(opts)
    summary["training_args"] = {k: v for k, v in training_args.to_dict().items()
                                if k in ("output_dir", "learning_rate", "max_steps", "num_train_epochs",
                                         "per_device_train_batch_size", "seed")}
    return summary


def _save_extracted(model, output_dir, is_main_process: bool) -> list[str]:
    """Every configuration of a stitchable model as its own stitched model, ``<output_dir>/stitch_i<i>_j<j>``."""
    paths = []
    for i, j in model.config.stitches:
        target = Path(output_dir) / f"stitch_i{i}_j{j}"
        if is_main_process:
            model.extract(i, j).save_pretrained(str(target))
        paths.append(str(target))
    return paths


def cli_options(run_name: str, argv: list[str]) -> list[type]:
    """The dataclasses whose fields are ``hf-klas finetune``'s flags, in :func:`run_finetune`'s order."""
    return [FinetuneOptions, TrainingArguments]
