"""One loaded detection model per worker process, shared by every DoFn that needs it.

``shared.Shared`` caches by weak reference and keeps only the most recently
acquired object alive between bundles; two handles acquired in turn evict each
other and reload the model on every bundle (measured on the streaming
DirectRunner: the job spent its time in skops loads). The detection pipeline
therefore passes ONE handle to the history and scoring steps, which acquire the
same object under the same tag.
"""
from __future__ import annotations

import logging
from typing import Optional

from apache_beam.metrics import Metrics
from apache_beam.utils import shared

from postauth.models import registry
from postauth.models.artifact import ArtifactError
from postauth.models.model import DetectionModel


class ModelHolder:
  """Weak-referenceable wrapper so ``shared.Shared`` can cache the model."""

  def __init__(self, model: DetectionModel):
    self.model = model


def load_following_latest(model_dir: str) -> DetectionModel:
  """LATEST, or, if it fails verification, the newest earlier promoted version that passes.

  For workers that start while a job runs (autoscaling, restarts): `postauth run`
  refuses a bad LATEST at launch, but a version promoted later and then found
  bad must not fail every work item of a running streaming job. The fallback
  is logged and counted (``model_fallbacks``).
  """
  try:
    return DetectionModel.load(model_dir)
  except ArtifactError as first:
    for version in reversed(registry.promotion_stack(model_dir)[:-1]):
      try:
        model = DetectionModel.load(model_dir, version)
      except ArtifactError:
        continue
      logging.error('LATEST of %s refused (%s); using the earlier promoted %s', model_dir, first, version)
      Metrics.counter('postauth', 'model_fallbacks').inc()
      return model
    raise


def acquire_model(handle: shared.Shared, model_dir: str, version: Optional[str] = None) -> DetectionModel:
  def load():
    return ModelHolder(DetectionModel.load(model_dir, version) if version
                       else load_following_latest(model_dir))
  return handle.acquire(load, tag=f'{model_dir}@{version or "LATEST"}').model
