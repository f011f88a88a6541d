"""What Beam asks again and again while a job is built is answered once: option views, DoFn specs."""
from __future__ import annotations

import copy
import gc
import pickle

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions, TypeOptions
from apache_beam.transforms import userstate
from apache_beam.transforms.userstate import BagStateSpec, TimerSpec, on_timer
from apache_beam.transforms.timeutil import TimeDomain

from postauth.pipeline import dofn_specs
from postauth.pipeline.jobs import run_pipeline
from postauth.pipeline.options import JobOptions, WindowOptions


def test_job_options_make_one_view_per_class_and_every_view_sees_every_write(monkeypatch):
  made = []
  plain_view_as = PipelineOptions.view_as
  monkeypatch.setattr(PipelineOptions, 'view_as', lambda self, cls: made.append(cls) or plain_view_as(self, cls))
  o = JobOptions(['--window-size=1800', '--runner=FnApiRunner'])
  assert o.view_as(WindowOptions) is o.view_as(WindowOptions)
  assert o.view_as(WindowOptions).window_size == 1800
  o.view_as(StandardOptions).runner = 'PrismRunner'
  o.view_as(WindowOptions).window_size = 900
  assert made == [WindowOptions, StandardOptions]
  # the views share the options' values with any view made the plain way
  assert plain_view_as(o, StandardOptions).runner == 'PrismRunner'
  assert plain_view_as(o, WindowOptions).window_size == o.view_as(WindowOptions).window_size == 900


def test_job_options_copy_and_pickle_without_their_views():
  o = JobOptions(['--window-size=1800'])
  o.view_as(WindowOptions).window_period = 300
  for other in (copy.deepcopy(o), pickle.loads(pickle.dumps(o))):
    assert type(other) is JobOptions and '_views' not in other.__dict__
    assert other.view_as(WindowOptions).window_size == 1800 and other.view_as(WindowOptions).window_period == 300
    other.view_as(WindowOptions).window_size = 60
    assert o.view_as(WindowOptions).window_size == 1800  # a copy's views write to the copy
  assert '_views' in o.__dict__
  p = beam.Pipeline(options=o)  # Beam deep-copies the options it is given
  assert type(p.options) is JobOptions and p.options.view_as(TypeOptions) is p.options.view_as(TypeOptions)


class _Stateful(beam.DoFn):
  BAG = BagStateSpec('bag', beam.coders.StrUtf8Coder())
  TICK = TimerSpec('tick', TimeDomain.WATERMARK)

  def process(self, kv, bag=beam.DoFn.StateParam(BAG), tick=beam.DoFn.TimerParam(TICK)):
    bag.add(kv[1])
    tick.set(0)

  @on_timer(TICK)
  def tick(self, bag=beam.DoFn.StateParam(BAG)):
    yield sorted(bag.read())


def test_dofn_specs_are_introspected_once_per_dofn_object_and_forgotten_with_it():
  asked = []
  introspect = userstate.get_dofn_specs.__dict__.get('introspect', userstate.get_dofn_specs)
  specs = dofn_specs._remembering(lambda fn: asked.append(type(fn).__name__) or introspect(fn))
  stateful, plain = _Stateful(), beam.Map(len).dofn
  first = specs(stateful)
  assert first == introspect(stateful) and {s.name for s in first[0]} == {'bag'}
  assert [t.time_domain for t in first[1]] == [TimeDomain.WATERMARK]
  first[0].clear()  # a caller's sets are its own
  assert specs(stateful) == introspect(stateful) and specs(plain) == (set(), set())
  assert specs(_Stateful()) == introspect(stateful)  # another object of the class: asked again
  assert len(asked) == 3
  del stateful
  gc.collect()
  assert len(specs.memo) == 1  # the plain DoFn's entry; the collected ones' went with them


def test_jobs_run_with_dofn_specs_remembered_and_stateful_dofns_still_stateful():
  run_pipeline(lambda p: p | beam.Create([('k', 'b'), ('k', 'a')]) | beam.ParDo(_Stateful())
               | beam.Map(lambda got: assert_equal(got, ['a', 'b'])),
               PipelineOptions(['--runner=FnApiRunner']))
  assert dofn_specs.introspect_dofns_once()  # idempotent
  assert getattr(userstate.get_dofn_specs, 'introspect', None) is not None
  assert getattr(userstate.get_dofn_specs.introspect, 'introspect', None) is None  # wrapped once
  assert userstate.is_stateful_dofn(_Stateful()) and not userstate.is_stateful_dofn(beam.Map(len).dofn)


def assert_equal(got, want):
  assert got == want, (got, want)
