"""The SDK workers a job's process hosts end a bundle within ~20 ms of its work, not 200."""
from __future__ import annotations

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.worker import statesampler
from apache_beam.utils.counters import CounterFactory

from postauth.pipeline import bundle_ends
from postauth.pipeline.jobs import run_pipeline


def test_jobs_run_with_a_state_sampler_that_sleeps_at_most_20_ms():
  defaults = statesampler.StateSampler.__init__.__defaults__
  try:
    statesampler.StateSampler.__init__.__defaults__ = (statesampler.DEFAULT_SAMPLING_PERIOD_MS,)
    run_pipeline(lambda p: p | beam.Create([1]) | beam.Map(lambda x: x), PipelineOptions(['--runner=FnApiRunner']))
    sampler = statesampler.StateSampler('s', CounterFactory())
    assert sampler.sampling_period_ms == bundle_ends.SAMPLING_PERIOD_MS == 20
    assert bundle_ends.shorten_bundle_ends()  # idempotent
    assert statesampler.StateSampler('s', CounterFactory()).sampling_period_ms == 20
  finally:
    statesampler.StateSampler.__init__.__defaults__ = defaults
