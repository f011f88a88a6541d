"""Features, model round trip, tamper refusal, finding merge."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from postauth.models.artifact import ArtifactError
from postauth.models.calibration import Calibration
from postauth.models.features import FEATURE_NAMES, INDEX, feature_vector
from postauth.models.model import DetectionModel
from postauth.models.train_config import TrainConfig
from postauth.models.profile import IdentityProfile
from postauth.domain.window import WindowAggregate
from postauth.transforms.findings import split_runs, to_finding
from postauth.transforms.windowing import IdentityWindow
from test_windowing import T0, ev


def agg_of(events):
  a = WindowAggregate()
  for e in events:
    a.add(e, 900)
  return a


def test_features_are_relative_to_the_identity_profile():
  routine = [ev('a', T0 + i * 60, 'GetObject') for i in range(5)]
  profile = IdentityProfile()
  for d in range(3):
    profile.update(agg_of([e._replace(event_time=e.event_time + d * 86400) for e in routine]),
                   T0 + d * 86400 + 3600)
  same = feature_vector(agg_of(routine), profile, T0 + 3 * 86400 + 3600)
  assert same[INDEX['novel_action_share']] == 0 and same[INDEX['novel_high_impact_events']] == 0
  key = ev('a', T0 + 100, 'CreateAccessKey')._replace(service='iam', category='credential_create')
  risky = feature_vector(agg_of(routine + [key]), profile, T0 + 3 * 86400 + 3600)
  assert risky[INDEX['novel_high_impact_events']] > 0
  assert risky[INDEX['excess_credential_create']] > 0
  burst = feature_vector(agg_of(routine * 10), profile, T0 + 3 * 86400 + 3600)
  assert burst[INDEX['volume_z']] > 2 and burst[INDEX['excess_data_read']] > 1


def test_profile_stays_bounded():
  profile = IdentityProfile()
  for i in range(50):
    events = [ev('a', T0 + i * 3600 + k, f'Get{i}_{k}')._replace(resource=f'r/{i}/{k}') for k in range(200)]
    profile.update(agg_of(events), T0 + i * 3600 + 3600)
  assert len(profile.seen['actions']) <= 512 * 1.25
  assert len(profile.seen['resources']) <= 2048 * 1.25
  assert len(json.dumps(profile.to_dict())) < 200_000


def test_calibration_is_monotonic_and_extrapolates():
  raw = np.random.default_rng(0).normal(size=5000)
  cal = Calibration.fit(raw)
  grid = np.linspace(-3, 8, 50)
  scores = cal.score(grid)
  assert np.all(np.diff(scores) >= -1e-9)
  assert cal.score(np.array([raw.max() + 3]))[0] > cal.score(np.array([raw.max()]))[0] > 3


def _tiny_model():
  rng = np.random.default_rng(1)
  x = np.abs(rng.normal(0, 0.1, size=(400, len(FEATURE_NAMES))))
  return DetectionModel.fit({'api_key': x}, {'a': IdentityProfile()},
                            TrainConfig(n_estimators=20, min_cohort_windows=100), (T0, T0 + 86400))


def test_feature_tail_probability_of_a_batch_equals_each_row_alone():
  """A batch is searched per feature, a single row compared with every quantile: both count the
  training quantiles strictly below x, ties, infinities and NaN included."""
  from postauth.models.calibration import FeatureDistribution
  rng = np.random.default_rng(3)
  train = np.column_stack([rng.poisson(2, 500), np.zeros(500), rng.exponential(5, 500).round(1)])
  dist = FeatureDistribution.fit(train)
  x = np.vstack([train[:40], dist.quantiles[:, ::50].T, [[np.nan, 0.0, np.inf], [-np.inf, 1.0, 3.0]],
                 rng.uniform(-1, 30, (60, 3)).round(0)])
  batch = dist.tail_probability(x)
  rows = np.vstack([dist.tail_probability(row[None, :]) for row in x])
  assert np.array_equal(batch, rows, equal_nan=True)
  assert batch[-62, 1] == 1.0 and batch[-62, 0] == 1.0 / 501  # 0 where all training was 0; NaN rarest


def test_round_trip_gives_identical_scores(tmp_path):
  model = _tiny_model()
  model.save(str(tmp_path))
  loaded = DetectionModel.load(str(tmp_path))
  assert loaded.version == model.version
  windows = [IdentityWindow('a', T0, T0 + 3600, agg_of([ev('a', T0 + k) for k in range(n)])) for n in (1, 5, 50)]
  s1, _, x1 = model.score(windows, ['api_key'] * 3)
  s2, _, x2 = loaded.score(windows, ['api_key'] * 3)
  np.testing.assert_array_equal(s1, s2)
  np.testing.assert_array_equal(x1, x2)
  with open(tmp_path / model.version / 'manifest.json') as f:
    manifest = json.load(f)
  assert set(manifest['files']) >= {'forest-api_key.skops', 'forest-_global.skops', 'profiles.json.gz'}
  assert manifest['feature_names'] == list(FEATURE_NAMES) and 'scikit_learn' in manifest['libraries']


def test_tampered_artifact_is_refused_by_name(tmp_path):
  model = _tiny_model()
  model.save(str(tmp_path))
  forest = tmp_path / model.version / 'forest-api_key.skops'
  forest.write_bytes(forest.read_bytes() + b'x')
  with pytest.raises(ArtifactError, match='forest-api_key.skops'):
    DetectionModel.load(str(tmp_path))


def _scored(start, score, identity='a'):
  return {'identity': identity, 'window_start': T0 + start, 'window_end': T0 + start + 3600,
          'score': score, 'severity': 'low', 'model_version': 'v', 'cohort': 'c', 'score_forest': score,
          'score_rarity': 0.0, 'reasons': [{'feature': 'f', 'value': 1, 'baseline': 0, 'detail': 'd'}],
          'panes': {str(T0 + start + k * 900): 1 for k in range(4)}, 'event_count': 4,
          'context': {'identity_type': 'api_key', 'owner': 'o', 'team': 't', 'environment': 'prod'}}


def test_overlapping_windows_merge_into_one_deterministic_finding():
  windows = [_scored(0, 3.5), _scored(900, 5.0), _scored(1800, 4.0), _scored(8 * 3600, 3.2)]
  runs = split_runs(list(reversed(windows)))
  assert [len(r) for r in runs] == [3, 1]
  f = to_finding(runs[0])
  assert (f['score'], f['windows'], f['event_count']) == (5.0, 3, 6)  # union of 6 panes
  assert f['window_end'] > f['window_start']
  assert to_finding(list(reversed(runs[0])))['finding_id'] == f['finding_id']
  assert to_finding(runs[1])['finding_id'] != f['finding_id']


def test_model_json_is_read_fast_and_still_reads_python_json_infinity():
  import gzip
  import math
  from postauth.models import artifact
  assert artifact.loads_json(b'{"a": [1, 2.5]}') == {'a': [1, 2.5]}
  value = artifact.loads_json_gz(gzip.compress(b'{"hi": Infinity, "lo": -Infinity, "n": NaN}'))
  assert value['hi'] == math.inf and value['lo'] == -math.inf and math.isnan(value['n'])


def test_the_training_fit_reads_no_side_input_and_another_stage_reads_its_version(sample, tmp_path):
  """On Prism a stage reading side inputs, or one without a data output, keeps the runner
  spinning a core while its bundle runs; the fit is training's longest bundle."""
  import apache_beam as beam
  from apache_beam.options.pipeline_options import PipelineOptions
  from postauth.pipeline.train import build_training
  options = PipelineOptions([f'--events={sample["dir"]}/history/*'])
  p = beam.Pipeline(runner='BundleBasedDirectRunner', options=options)
  version = build_training(p, options, sample['inventory'], str(tmp_path / 'model'))['version']
  nodes = []

  def walk(node):
    nodes.append(node)
    for part in node.parts:
      walk(part)
  walk(p.transforms_stack[0])
  fit = [n for n in nodes if n.full_label.endswith('FitAndSave')]
  assert len(fit) == 1 and not fit[0].side_inputs
  assert any(version in n.inputs for n in nodes if 'Reshuffle' in type(n.transform).__name__)


def test_a_profile_answers_a_windows_repeated_questions_once_and_forgets_them_when_it_changes():
  """unseen('actions') and unseen_families are asked up to five times per window (features,
  rules, judgment): the profile keeps the last answer per question for the same counter object;
  callers get their own copies; an update or merge clears it; it is never stored."""
  import pickle
  p = IdentityProfile()
  a = WindowAggregate()
  a.actions.update({'s3:GetObject': 2, 'kms:Decrypt': 1})
  a.resources.update({'arn:aws:s3:::bucket-a/key': 2})
  first = p.unseen('actions', a.actions)
  first.sort()  # a caller sorting its answer in place (access_denied_sweep does)
  assert p.unseen('actions', a.actions) == ['s3:GetObject', 'kms:Decrypt']
  fam = p.unseen_families(a.resources)
  fam['x'] = 1
  assert p.unseen_families(a.resources) == {'bucket-a': 1}
  p.update(a, 3600.0)
  assert p.unseen('actions', a.actions) == [] and p.unseen_families(a.resources) == {}
  other = IdentityProfile()
  other.unseen('actions', a.actions)
  other.merge(p)
  assert other.unseen('actions', a.actions) == []
  assert '_asked' not in p.to_dict() and '_asked' not in p.__getstate__()
  assert pickle.loads(pickle.dumps(p)).unseen('actions', {'sts:AssumeRole': 1}) == ['sts:AssumeRole']


def test_the_fleet_table_is_written_the_same_whatever_order_its_parts_merged_in():
  from postauth.models.artifact import dumps_json_gz
  from postauth.models.fleet import FleetProfile
  parts = [('api_key', [7, 3, 11]), ('api_key', [3, 5]), ('ci', [11, 2, 7])]

  def merged(order):
    fleet = FleetProfile()
    for i in order:
      fleet.merge(FleetProfile().add(*parts[i]))
    return fleet

  one, other = merged([0, 1, 2]), merged([2, 1, 0])
  assert list(one.actions['api_key']) != list(other.actions['api_key'])  # the merge order shows
  assert dumps_json_gz(one.to_dict()) == dumps_json_gz(other.to_dict())
  assert FleetProfile.from_dict(one.to_dict()).actions == one.actions
