"""Training time and scoring throughput of DetectionModel on 100k identity-windows.

    python bench/model.py [--windows 100000] [--identities 1000] [--team-cohorts]

Synthesises identity-windows without Beam: per identity a routine (actions with
their taxonomy categories, resources, a network, a user agent), a profile folded
from its history windows (``IdentityProfile.update``, as training does), then
``--windows`` scored windows of a few calls each, 1% of them with never-seen
sensitive calls. Features come from ``models.features.feature_vector``, the one
code path of training and scoring. Then, in one run:

- fit: ``DetectionModel.fit`` on all feature vectors (cohorts: 5 identity types,
  with --team-cohorts also 10 teams), against one bare ``IsolationForest.fit`` +
  ``score_samples`` over the same matrix (what fitting costs without cohorts,
  calibration and rarity);
- score: ``DetectionModel.score`` (features + forest + rarity + calibration, as
  the scoring DoFn calls it) in batches of 512 and 4096, with cohorts mixed in a
  batch (the batch path's ``BatchElements``) and one cohort per batch (the
  streaming path's ``GroupIntoBatches`` keyed by cohort), and
  ``DetectionModel.score_features`` (the same without the feature code), against
  one bare ``IsolationForest.score_samples`` over the whole matrix.

Ratios are what to compare across machines; absolute figures depend on the load.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))

TYPES = ('service_account', 'api_key', 'workload_identity', 'ai_agent', 'human')
TEAMS = ('payments', 'identity', 'data', 'search', 'growth', 'ml', 'platform', 'support', 'infra', 'sec')
ROUTINE = [('s3', 'GetObject', 'data_read'), ('s3', 'PutObject', 'data_write'),
           ('dynamodb', 'GetItem', 'data_read'), ('dynamodb', 'Query', 'data_read'),
           ('sqs', 'SendMessage', 'message_publish'), ('sqs', 'ReceiveMessage', 'data_read'),
           ('kms', 'Decrypt', 'data_read'), ('sts', 'AssumeRole', 'other'),
           ('ecr', 'GetAuthorizationToken', 'other'), ('logs', 'PutLogEvents', 'data_write'),
           ('ec2', 'DescribeInstances', 'enumerate'), ('lambda', 'InvokeFunction', 'remote_execution')]
RARE = [('secretsmanager', 'GetSecretValue', 'secret_access'), ('iam', 'CreateAccessKey', 'credential_create'),
        ('iam', 'AttachRolePolicy', 'privilege_change'), ('cloudtrail', 'StopLogging', 'defense_evasion')]
HOUR = 3600.0


def synthesise(n_windows: int, identities: int, history: int, seed: int):
  """(windows, contexts, profiles) for n_windows identity-windows of `identities` identities.

  Aggregates are filled directly (the counts ``WindowAggregate.add`` would
  produce for those calls), so synthesis does not dominate the run.
  """
  from postauth.models.profile import IdentityProfile
  from postauth.domain.window import WindowAggregate
  from postauth.transforms.windowing import IdentityWindow
  rng = np.random.default_rng(seed)
  t0 = 1793750400.0
  per = -(-n_windows // identities)
  windows, contexts, profiles = [], [], {}

  def window(ident, routine, net, ua, start, anomalous):
    calls = list(routine)
    if anomalous:
      calls += [RARE[int(j)] for j in rng.choice(len(RARE), size=2, replace=False)]
    counts = rng.multinomial(int(rng.poisson(8)) + 1, np.ones(len(calls)) / len(calls))
    agg = WindowAggregate()
    for (service, action, cat), c in zip(calls, counts.tolist()):
      if not c:
        continue
      key = f'{service}:{action}'
      agg.actions[key] = c
      agg.action_category[key] = cat
      agg.categories[cat] = agg.categories.get(cat, 0) + c
      res = f'{service}/{ident[-6:]}/{int(rng.integers(3 if not anomalous else 40))}'
      agg.resources[res] = agg.resources.get(res, 0) + c
      agg.count += c
      agg.read_only += c if cat in ('data_read', 'enumerate') else 0
    agg.networks = {net: agg.count}
    agg.agents = {ua: agg.count}
    agg.regions = {'us-east-1': agg.count}
    agg.panes = {int(start): agg.count}
    agg.first_time, agg.last_time = start, start + 60
    agg.identity_type = 'AssumedRole'
    return agg

  for i in range(identities):
    ident = f'arn:aws:iam::111122223333:role/bench-{i:05d}'
    kind, team = TYPES[i % len(TYPES)], TEAMS[(i // len(TYPES)) % len(TEAMS)]
    routine = [ROUTINE[j] for j in rng.choice(len(ROUTINE), size=int(rng.integers(2, 6)), replace=False)]
    net, ua = f'10.{i % 250}.{i // 250}.0/24', f'Boto3/1 linux'
    profile = IdentityProfile()
    for h in range(history):
      start = t0 + h * HOUR
      profile.update(window(ident, routine, net, ua, start, False), start + HOUR)
    profiles[ident] = profile
    for k in range(per):
      start = t0 + (history + k) * 900.0
      agg = window(ident, routine, net, ua, start, rng.random() < 0.01)
      windows.append(IdentityWindow(ident, start, start + HOUR, agg))
      contexts.append({'identity_type': kind, 'team': team})
  return windows[:n_windows], contexts[:n_windows], profiles


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--windows', type=int, default=100_000)
  ap.add_argument('--identities', type=int, default=1000)
  ap.add_argument('--history', type=int, default=24, help='history windows folded into each profile')
  ap.add_argument('--team-cohorts', action='store_true')
  ap.add_argument('--seed', type=int, default=1)
  a = ap.parse_args()
  from sklearn.ensemble import IsolationForest
  from postauth.models.features import feature_vector
  from postauth.models.model import DetectionModel, cohort_key
  from postauth.models.train_config import TrainConfig

  t = time.perf_counter()
  windows, contexts, profiles = synthesise(a.windows, a.identities, a.history, a.seed)
  t_synth = time.perf_counter() - t
  n = len(windows)
  t = time.perf_counter()
  x = np.vstack([feature_vector(w.agg, profiles[w.identity], w.window_end) for w in windows])
  t_feat = time.perf_counter() - t
  keys = np.array([cohort_key(c['identity_type'], c['team']) for c in contexts])
  leaves = {k: x[keys == k] for k in np.unique(keys)}
  config = TrainConfig(team_cohorts=a.team_cohorts)
  print(f'{n} identity-windows of {a.identities} identities ({len(leaves)} type/team groups), '
        f'synthesised in {t_synth:.1f}s; features {n / t_feat:,.0f} windows/s ({t_feat:.1f}s)', flush=True)

  t = time.perf_counter()
  model = DetectionModel.fit(leaves, profiles, config, (windows[0].window_start, windows[-1].window_end))
  t_fit = time.perf_counter() - t
  t = time.perf_counter()
  bare = IsolationForest(n_estimators=config.n_estimators, max_samples=config.max_samples,
                         random_state=config.seed).fit(x)
  bare.score_samples(x)
  t_bare_fit = time.perf_counter() - t
  print(f'fit  DetectionModel.fit ({len(model.forests)} cohort models, calibrated): {t_fit:6.2f}s   '
        f'bare IsolationForest fit+score_samples: {t_bare_fit:5.2f}s   ratio {t_fit / t_bare_fit:.1f}x',
        flush=True)

  t = time.perf_counter()
  bare.score_samples(x)
  t_bare = time.perf_counter() - t
  base = n / t_bare
  print(f'score baseline: one IsolationForest.score_samples over {n} rows: {base:9,.0f} windows/s '
        f'({t_bare:.2f}s)')
  cohorts = np.array([model.cohort_for(c) for c in contexts])
  by_cohort = np.argsort(cohorts, kind='stable')  # the streaming path batches per cohort
  for batch in (512, 4096):
    t = time.perf_counter()
    for i in range(0, n, batch):
      model.score(windows[i:i + batch], contexts[i:i + batch])
    t_mixed = time.perf_counter() - t
    t = time.perf_counter()
    for i in range(0, n, batch):
      idx = by_cohort[i:i + batch]
      model.score([windows[j] for j in idx], [contexts[j] for j in idx])
    t_sorted = time.perf_counter() - t
    t = time.perf_counter()
    for i in range(0, n, batch):
      idx = by_cohort[i:i + batch]
      for cohort in np.unique(cohorts[idx]):
        model.score_features(x[idx[cohorts[idx] == cohort]], cohort)
    t_model = time.perf_counter() - t
    print(f'score batch {batch:5d}: DetectionModel.score, mixed cohorts {n / t_mixed:9,.0f} windows/s '
          f'({base * t_mixed / n:5.1f}x baseline time); one cohort per batch {n / t_sorted:9,.0f} '
          f'windows/s ({base * t_sorted / n:5.1f}x); score_features, no feature code '
          f'{n / t_model:9,.0f} windows/s ({base * t_model / n:4.1f}x)', flush=True)


if __name__ == '__main__':
  main()
