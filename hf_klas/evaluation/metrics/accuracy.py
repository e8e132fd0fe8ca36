"""Top-1 accuracy of an image classifier."""

from __future__ import annotations

from ...families import IMAGE_CLASSIFICATION
from ...training.data import prepare_image_dataset
from ..accuracy import top1_accuracy
from .base import Metric


class Accuracy(Metric):
    name = "accuracy"
    task = IMAGE_CLASSIFICATION
    higher_is_better = True
    needs = ("logits", "labels")
    auto_priority = 0
    description = "top-1 accuracy (images)"

    @classmethod
    def compute(cls, model, preprocessor, ds, opts) -> dict:
        data = prepare_image_dataset(ds, model.config.num_labels, preprocessor, image_column=opts.image_column,
                                     label_column=opts.label_column)
        return {"value": top1_accuracy(model, data, batch_size=opts.batch_size, label_key="labels",
                                       progress=opts.progress)}
