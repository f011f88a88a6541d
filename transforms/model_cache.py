"""One loaded detection model per worker process, shared by every DoFn that needs it.

``shared.Shared`` caches by weak reference and keeps only the most recently
acquired object alive between bundles; two handles acquired in turn evict each
other and reload the model on every bundle (measured on the streaming
DirectRunner: the job spent its time in skops loads). The detection pipeline
therefore passes ONE handle to the history and scoring steps, which acquire the
same object under the same tag.
"""
from __future__ import annotations

from typing import Optional

from apache_beam.utils import shared

from models.model import DetectionModel


class ModelHolder:
  """Weak-referenceable wrapper so ``shared.Shared`` can cache the model."""

  def __init__(self, model: DetectionModel):
    self.model = model


def acquire_model(handle: shared.Shared, model_dir: str, version: Optional[str] = None) -> DetectionModel:
  return handle.acquire(lambda: ModelHolder(DetectionModel.load(model_dir, version)),
                        tag=f'{model_dir}@{version or "LATEST"}').model
