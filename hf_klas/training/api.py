"""``hf-klas finetune`` / :func:`run_finetune`: one options dataclass for the API and the CLI.

Three ways to name what to train:

* ``model``: a stitched model directory or Hub id (``save_pretrained`` output);
* ``front`` + ``back`` + ``front_blocks`` + ``back_start``: build the stitch from two anchors first (least-squares
  stitch init on the offline default calibration data);
* ``front`` + ``back`` + ``plan`` (a ``hf-klas select`` output directory): train an SN-Net supernet over the
  plan's candidate set (KLAS step 5), then write every candidate as its own stitched model under
  ``<output_dir>/stitch_i<i>_j<j>``.

Datasets: ``debian_descriptions`` (prompt/target, offline), ``fashion_mnist`` (offline), a local file
(``.json``/``.jsonl``/``.csv``/``.parquet``/``.txt``), a ``save_to_disk`` directory, or a Hub dataset name.

Everything is validated (options, columns, labels) before anything is written. With ``push_to_hub`` the final
(merged) model is pushed by the stitched model's own ``push_to_hub`` -- keeping hf_klas's model card -- rather
than by the Trainer (which would replace the card and push every checkpoint).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..anatomy import CAUSAL_LM
from ..errors import DataError, HfKlasError
from .finetune import MODES

__all__ = ["FinetuneOptions", "run_finetune", "load_dataset_arg", "load_stitched", "load_preprocessor_for",
           "save_finetuned", "training_arguments"]

BUILTIN_DATASETS = ("debian_descriptions", "fashion_mnist")


@dataclass
class FinetuneOptions:
    """Options of ``hf-klas finetune`` / :func:`run_finetune`."""

    model: str | None = field(default=None, metadata={
        "help": "Stitched model to finetune: a directory written by save_pretrained, or a Hub id."})
    front: str | None = field(default=None, metadata={
        "help": "Front anchor (alias, Hub id, directory, .gguf) to build the stitch from, when no model is given."})
    back: str | None = field(default=None, metadata={"help": "Back anchor (default: the front anchor itself)."})
    front_blocks: int | None = field(default=None, metadata={"help": "Front blocks i of the stitch to build."})
    back_start: int | None = field(default=None, metadata={"help": "First back block j of the stitch to build."})
    plan: str | None = field(default=None, metadata={
        "help": "A plan directory (hf-klas select): train an SN-Net supernet over its candidates with front/back, "
                "then save every candidate under <output_dir>/stitch_i<i>_j<j>."})
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
    output_dir: str = field(default="stitched-finetuned", metadata={"help": "Where checkpoints and the model go."})
    learning_rate: float = field(default=1e-4, metadata={"help": "Learning rate of the stitch layer/adapters."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Epochs (ignored when max_steps > 0)."})
    max_steps: int = field(default=-1, metadata={"help": "Total optimizer steps (-1: from num_train_epochs)."})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Batch size per device."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Gradient accumulation steps."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    warmup_steps: int = field(default=0, metadata={"help": "Linear warm-up steps."})
    lr_scheduler_type: str = field(default="linear", metadata={"help": "transformers LR scheduler name."})
    logging_steps: int = field(default=10, metadata={"help": "Log every N steps."})
    save_steps: int = field(default=500, metadata={"help": "Checkpoint every N steps (0: no checkpoints)."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Keep at most N checkpoints."})
    resume_from_checkpoint: str | None = field(default=None, metadata={
        "help": "'last' (newest checkpoint in output_dir) or a checkpoint directory; refused if it belongs to "
                "another stitch configuration."})
    seed: int = field(default=42, metadata={"help": "Seed (data order, sampling, init)."})
    use_cpu: bool = field(default=False, metadata={"help": "Train on CPU even when an accelerator is present."})
    report_to: str = field(default="none", metadata={"help": "Trainer loggers (none, tensorboard, wandb, ...)."})
    push_to_hub: bool = field(default=False, metadata={"help": "Push the final stitched model to the Hub."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub repo id (default: output_dir's name)."})
    training_args: str | None = field(default=None, metadata={
        "help": "JSON object of further TrainingArguments fields, e.g. '{\"bf16\": true}'."})
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})


# ---- helpers shared with the example scripts and hf_klas.evaluation.api ---------------------------------------


def load_dataset_arg(name: str, split: str = "train", config: str | None = None, limit: int | None = None):
    """A ``datasets.Dataset`` from a builtin name, a local file or ``save_to_disk`` directory, or the Hub."""
    import datasets

    if name == "debian_descriptions":
        from ..data.debian_descriptions import load_debian_descriptions

        ds = load_debian_descriptions(split=split)
    elif name == "fashion_mnist":
        from ..data.fashion_mnist import load_fashion_mnist, with_pixel_values

        ds = load_fashion_mnist("test" if split in ("test", "validation", "eval") else "train", limit=limit)
        ds = with_pixel_values(ds)
    else:
        path = Path(name)
        if path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()):
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise DataError(f"{path} has splits {list(ds)}, not {split!r}.", "Pass an existing split.")
                ds = ds[split]
        elif path.is_file():
            kind = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}.get(
                path.suffix.lower())
            if kind is None:
                raise DataError(f"Unsupported data file {path} (suffix {path.suffix!r}).",
                                "Use .json/.jsonl/.csv/.parquet/.txt, or a save_to_disk directory.")
            ds = datasets.load_dataset(kind, data_files=str(path), split="train")
        elif path.exists() or name.startswith((".", "/")):
            raise DataError(f"{path} is neither a data file nor a save_to_disk directory.",
                            "Pass a .json/.jsonl/.csv/.parquet/.txt file or a directory written by save_to_disk.")
        else:
            try:
                ds = datasets.load_dataset(name, config, split=split)
            except Exception as err:  # offline, missing, gated
                raise DataError(f"Could not load dataset {name!r} ({type(err).__name__}: {err}).",
                                f"Use an offline builtin ({', '.join(BUILTIN_DATASETS)}), a local file or "
                                "save_to_disk directory, or check the Hub name and your connection.") from err
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return ds


def load_stitched(name_or_path: str):
    """A stitched model from a directory / Hub id, with the right task class."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageClassification

    import hf_klas  # noqa: F401  (registers the Auto classes)

    from ..configuration_stitched import StitchedConfig

    try:
        config = AutoConfig.from_pretrained(name_or_path)
    except Exception as err:
        raise HfKlasError(f"Could not read a model config from {name_or_path!r} ({type(err).__name__}: {err}).",
                          "Pass a directory written by save_pretrained (with config.json) or a Hub id.") from err
    if not isinstance(config, StitchedConfig):
        raise HfKlasError(f"{name_or_path} is a {config.model_type!r} model, not a stitched model.",
                          "Build a stitch first (front/back/front_blocks/back_start, or StitchedModel.from_anchors).")
    auto = AutoModelForCausalLM if config.task == CAUSAL_LM else AutoModelForImageClassification
    return auto.from_pretrained(name_or_path)


def load_preprocessor_for(model, name_or_path: str | None = None):
    """The tokenizer / image processor saved with the model, else its anchors' (None when there is none)."""
    pre = getattr(model, "_hf_klas_preprocessor", None)
    if pre is not None:
        return pre
    from ..loading import resolve_anchor

    candidates = [name_or_path] if name_or_path else []
    anchors = getattr(model.config, "anchors", None) or {}
    candidates += [(anchors.get(k) or {}).get("name_or_path") for k in ("back", "front")]
    from ..zoo import ALIASES, LOCAL

    for cand in candidates:
        # in-memory anchors are recorded by class name: only paths, zoo aliases and Hub ids are worth a look
        if not cand or not (Path(cand).exists() or cand in ALIASES or cand in LOCAL or "/" in cand):
            continue
        try:
            if Path(cand).is_dir():
                from transformers import AutoImageProcessor, AutoTokenizer

                loader = AutoTokenizer if model.config.task == CAUSAL_LM else AutoImageProcessor
                pre = loader.from_pretrained(cand)
            else:
                pre = resolve_anchor(cand).load_preprocessor()
        except Exception:  # noqa: BLE001 - no preprocessor there; try the next candidate
            pre = None
        if pre is not None:
            model._hf_klas_preprocessor = pre
            return pre
    return None


def training_arguments(opts: FinetuneOptions, output_dir: str | None = None):
    """``TrainingArguments`` from the options (Hub pushing stays off: see the module docstring)."""
    from transformers import TrainingArguments

    extra = {}
    if opts.training_args:
        try:
            extra = json.loads(opts.training_args)
        except json.JSONDecodeError as err:
            raise HfKlasError(f"training_args is not valid JSON ({err}).",
                              "Pass a JSON object, e.g. '{\"bf16\": true, \"eval_steps\": 50}'.") from err
        if not isinstance(extra, dict):
            raise HfKlasError("training_args must be a JSON object.", "Pass e.g. '{\"bf16\": true}'.")
    kwargs = dict(
        output_dir=output_dir or opts.output_dir, learning_rate=opts.learning_rate,
        num_train_epochs=opts.num_train_epochs, max_steps=opts.max_steps,
        per_device_train_batch_size=opts.per_device_train_batch_size,
        gradient_accumulation_steps=opts.gradient_accumulation_steps, weight_decay=opts.weight_decay,
        warmup_steps=opts.warmup_steps, lr_scheduler_type=opts.lr_scheduler_type, logging_steps=opts.logging_steps,
        save_strategy="steps" if opts.save_steps else "no", save_steps=opts.save_steps or 500,
        save_total_limit=opts.save_total_limit, seed=opts.seed, use_cpu=opts.use_cpu,
        report_to=[] if opts.report_to in ("none", "", None) else opts.report_to.split(","),
        disable_tqdm=not opts.progress, push_to_hub=False,
    )
    kwargs.update(extra)
    try:
        return TrainingArguments(**kwargs)
    except (TypeError, ValueError) as err:
        raise HfKlasError(f"Invalid training arguments: {err}.", "Check the options and training_args JSON.") from err


def save_finetuned(model, output_dir, recipe: dict | None = None, merge: bool = True, preprocessor=None,
                   is_main_process: bool = True) -> dict:
    """Save a finetuned stitched model (LoRA: adapter to ``output_dir/adapter``, merged model to ``output_dir``).

    Returns ``{"model_dir": ..., "adapter_dir": ...}``; the returned model (merged when LoRA) is under ``"model"``.
    """
    from .lora import merge_lora
    from .resume import _unwrap

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
    final = _unwrap(final)
    if recipe:
        final.config.recipe = {**(final.config.recipe or {}), "finetune": recipe}
    if preprocessor is not None and getattr(final, "_hf_klas_preprocessor", None) is None:
        final._hf_klas_preprocessor = preprocessor
    final.save_pretrained(str(output_dir), is_main_process=is_main_process)
    out["model"] = final
    return out


def _targets(value: str | None):
    if value is None:
        return None
    parts = [p.strip() for p in value.split(",") if p.strip()]
    return parts[0] if len(parts) == 1 and any(ch in parts[0] for ch in "\\^$*+?[]()|") else parts


def _validate(opts: FinetuneOptions) -> None:
    if opts.mode not in MODES:
        raise HfKlasError(f"Unknown finetuning mode {opts.mode!r}.", f"Use one of {', '.join(MODES)}.")
    if opts.model and (opts.front or opts.plan):
        raise HfKlasError("Both model= and front=/plan= were given.",
                          "Pass a stitched model, or anchors (front/back) with front_blocks/back_start or a plan.")
    if not opts.model and not opts.front:
        raise HfKlasError("Nothing to finetune: no model and no front anchor.",
                          "Pass model=<stitched model dir>, or front/back with front_blocks/back_start (or plan).")
    if opts.front and not opts.plan and (opts.front_blocks is None or opts.back_start is None):
        raise HfKlasError("front was given without a stitch point or a plan.",
                          "Pass front_blocks and back_start, or plan=<plan directory> to train all its candidates.")
    if opts.plan and opts.mode == "lora":
        raise HfKlasError("A supernet (plan=) cannot be trained with mode='lora'.",
                          "Use mode='full' (SN-Net) or 'stitch'; LoRA-finetune an extracted stitch afterwards.")
    if opts.stitch_init not in ("least_squares", "identity"):
        raise HfKlasError(f"Unknown stitch_init {opts.stitch_init!r}.", "Use 'least_squares' or 'identity'.")
    if opts.sampling not in ("uniform", "flops"):
        raise HfKlasError(f"Unknown sampling {opts.sampling!r}.", "Use 'uniform' or 'flops'.")
    if opts.push_to_hub and opts.plan:
        raise HfKlasError("push_to_hub with a plan would push many models.",
                          "Push the extracted stitch you want with StitchedModelFor*.from_pretrained(dir).push_to_hub.")


def _prepare_data(opts, model, preprocessor, split, limit):
    from .finetune import prepare_causal_lm_dataset, prepare_image_dataset

    task = model.task if hasattr(model, "stitches") else model.config.task
    name = opts.dataset or ("debian_descriptions" if task == CAUSAL_LM else "fashion_mnist")
    ds = load_dataset_arg(name, split, opts.dataset_config, limit=limit)
    if task == CAUSAL_LM:
        prompt, target = opts.prompt_column, opts.target_column
        if name == "debian_descriptions" and prompt is None and target is None:
            prompt, target = "prompt", "target"
        vocab = (model.core.config if hasattr(model, "stitches") else model.config).vocab_size
        return prepare_causal_lm_dataset(ds, preprocessor, text_column=opts.text_column, prompt_column=prompt,
                                         target_column=target, max_length=opts.max_length, vocab_size=vocab)
    num_labels = (model.core.config if hasattr(model, "stitches") else model.config).num_labels
    return prepare_image_dataset(ds, num_labels, preprocessor, image_column=opts.image_column,
                                 label_column=opts.label_column)


def _calibration(opts):
    from ..selection.api import load_calibration_arg

    return load_calibration_arg(opts.calibration)


def _load_teacher(opts, model):
    from ..loading import resolve_anchor

    cfg = model.core.config if hasattr(model, "stitches") else model.config
    spec = opts.teacher or ((cfg.anchors or {}).get("back") or {}).get("name_or_path")
    if not spec:
        raise HfKlasError("Distillation needs a teacher, and the stitched config records no back anchor.",
                          "Pass teacher=<the back anchor: alias, Hub id or directory>.")
    try:
        return resolve_anchor(spec).load_full()
    except HfKlasError as err:
        raise HfKlasError(f"Could not load the distillation teacher {spec!r}: {err.cause}",
                          "Pass teacher=<the back anchor: alias, Hub id or directory>.") from err


def run_finetune(opts: FinetuneOptions | None = None, **kwargs) -> dict:
    """``hf-klas finetune``: train, save (and push); returns a JSON-able summary."""
    if opts is None:
        opts = FinetuneOptions(**kwargs)
    elif kwargs:
        from dataclasses import replace

        opts = replace(opts, **kwargs)
    t0 = time.perf_counter()
    _validate(opts)
    from transformers import set_seed

    from .finetune import build_trainer

    set_seed(opts.seed)
    args = training_arguments(opts)  # invalid arguments fail before any model is loaded
    # ---- model ----------------------------------------------------------------------------------------------
    supernet = None
    if opts.plan:
        from .supernet import StitchedSupernet

        calibration = None
        if opts.stitch_init == "least_squares":
            calibration = _calibration(opts) or "default"
        supernet = StitchedSupernet.from_anchors(opts.front, opts.back, plan=opts.plan, calibration=calibration,
                                                 sampling=opts.sampling, seed=opts.seed, progress=opts.progress)
        model = supernet
        preprocessor = getattr(supernet.core, "_hf_klas_preprocessor", None)
    elif opts.model:
        model = load_stitched(opts.model)
        preprocessor = load_preprocessor_for(model, opts.model)
    else:
        from ..building import StitchedModel

        model = StitchedModel.from_anchors(opts.front, opts.back, opts.front_blocks, opts.back_start,
                                           calibration=_calibration(opts), stitch_init=opts.stitch_init,
                                           progress=opts.progress)
        preprocessor = load_preprocessor_for(model)
    # ---- data (validated before anything is written) ----------------------------------------------------------
    train_ds = _prepare_data(opts, model, preprocessor, opts.train_split, opts.max_train_samples)
    eval_ds = (_prepare_data(opts, model, preprocessor, opts.eval_split, opts.max_eval_samples)
               if opts.eval_split else None)
    teacher = _load_teacher(opts, model) if opts.distill else None
    mode = opts.mode
    trainer = build_trainer(model, args, train_ds, eval_ds, mode=mode, lora_r=opts.lora_r,
                            lora_alpha=opts.lora_alpha, lora_dropout=opts.lora_dropout,
                            lora_target_modules=_targets(opts.lora_target_modules),
                            anchor_lr_scale=opts.anchor_lr_scale, teacher=teacher, distill_alpha=opts.distill_alpha,
                            distill_temperature=opts.distill_temperature,
                            processing_class=preprocessor)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in trainer.model.parameters())
    result = trainer.train(resume_from_checkpoint=opts.resume_from_checkpoint)
    metrics = dict(result.metrics)
    if eval_ds is not None:
        metrics.update(trainer.evaluate())
    recipe = {"mode": mode, "learning_rate": opts.learning_rate, "anchor_lr_scale": opts.anchor_lr_scale,
              "steps": int(result.global_step), "dataset": opts.dataset or "default", "seed": opts.seed,
              "train_loss": float(result.training_loss)}
    if mode == "lora":
        recipe.update({"lora_r": opts.lora_r, "lora_alpha": opts.lora_alpha or 2 * opts.lora_r})
    if opts.distill:
        recipe.update({"distill_alpha": opts.distill_alpha, "distill_temperature": opts.distill_temperature})
    summary = {"output_dir": opts.output_dir, "mode": mode, "global_step": int(result.global_step),
               "train_loss": float(result.training_loss), "metrics": metrics, "trainable_parameters": trainable,
               "total_parameters": total}
    main = trainer.args.should_save
    if supernet is not None:
        if main:
            supernet.save_pretrained(Path(opts.output_dir) / "supernet")
        models = []
        for i, j in supernet.configs:
            sub = supernet.extract(i, j)
            sub.config.recipe["finetune"] = recipe
            target = Path(opts.output_dir) / f"stitch_i{i}_j{j}"
            if main:
                sub.save_pretrained(str(target))
            models.append(str(target))
        summary.update({"supernet_dir": str(Path(opts.output_dir) / "supernet"), "models": models,
                        "configs": [list(c) for c in supernet.configs]})
    else:
        saved = save_finetuned(trainer.model, opts.output_dir, recipe=recipe, merge=opts.merge_lora,
                               preprocessor=preprocessor, is_main_process=main)
        summary.update({"model_dir": saved["model_dir"], "adapter_dir": saved["adapter_dir"]})
        if opts.push_to_hub and main:
            repo = opts.hub_model_id or Path(opts.output_dir).name
            saved["model"].push_to_hub(repo)
            summary["pushed_to"] = repo
    summary["seconds"] = time.perf_counter() - t0
    summary["options"] = asdict(opts)
    return summary
