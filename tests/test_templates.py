"""templates/: the Dataflow Flex Template, the Flink recipe and the scheduling recipes.

Nothing here can be submitted (no Google Cloud, no Flink, no Airflow), so these tests check
what can be checked offline and would break silently otherwise: that the template's
metadata covers every option (computed from ``ALL_OPTIONS``), that its regexes accept the
defaults and examples, that template parameters parse into the right ``PipelineOptions``,
that the Dockerfile names files that exist, that the ``gcloud`` commands in the READMEs use
real flags, and that the schedules and launch bodies are valid and name real parameters.
"""
from __future__ import annotations

import ast
import json
import os
import py_compile
import re
import shlex
import shutil
import subprocess
import sys

import pytest
from apache_beam.options.pipeline_options import (FlinkRunnerOptions, GoogleCloudOptions,
                                                  PipelineOptions, PortableOptions, SetupOptions,
                                                  StandardOptions, WorkerOptions,
                                                  _BeamArgumentParser)

from postauth.pipeline import launcher
from postauth.pipeline import options as opts
from postauth.pipeline import preflight

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))
TEMPLATES = os.path.join(ROOT, 'templates')
DATAFLOW = os.path.join(TEMPLATES, 'dataflow')
SCHEDULING = os.path.join(TEMPLATES, 'scheduling')
# `postauth retrain` as specified for the retrain command (issue 5).
RETRAIN_FLAGS = {'--events', '--inventory', '--model-dir', '--days', '--keep', '--labels-file'}
RETRAIN_REQUIRED = {'--events', '--inventory', '--model-dir'}


def _read(*parts):
  with open(os.path.join(ROOT, *parts)) as f:
    return f.read()


@pytest.fixture(scope='module')
def metadata():
  return json.loads(_read('templates', 'dataflow', 'metadata.json'))


@pytest.fixture(scope='module')
def params(metadata):
  return {p['name']: p for p in metadata['parameters']}


def _example(param, action):
  """The value a parameter's regexes must accept: the option's default, else its example."""
  if action is not None and action.default is not None and action.nargs != 0:
    return str(action.default)
  if action is not None and action.nargs == 0:
    return str(action.default).lower()
  m = (re.search(r'\(Example: ([^)\s]+)\)', param['helpText'])
       or re.search(r'Default: (\S+)\.$', param['helpText']))
  assert m, f'{param["name"]}: helpText needs "(Example: VALUE)" or "Default: VALUE."'
  return m.group(1)


def _matches(param, value):
  return all(re.fullmatch(r, value) for r in param['regexes'])  # Dataflow: Java Pattern.matches


# -- Dataflow Flex Template: metadata.json -------------------------------------------------

def test_metadata_has_every_option_and_nothing_else(metadata, params):
  assert metadata['name'] and metadata['description']
  names = [p['name'] for p in metadata['parameters']]
  assert len(names) == len(set(names)), 'duplicate parameter'
  options = set(launcher.option_actions())  # every dest of every class in ALL_OPTIONS
  missing = options - set(names)
  assert not missing, f'options without template metadata: {sorted(missing)}'
  assert set(names) == set(launcher.template_parameters())
  for p in metadata['parameters']:
    assert set(p) >= {'name', 'label', 'helpText', 'isOptional', 'regexes'}, p['name']
    assert re.fullmatch(r'[a-z][a-z0-9_]*', p['name'])
    assert p['label'].strip() and len(p['helpText']) > 20 and isinstance(p['isOptional'], bool)
    assert p['regexes'] and all(isinstance(r, str) for r in p['regexes'])
  # What every command needs is required; the rest is optional.
  required = {n for n, p in params.items() if not p['isOptional']}
  assert required == {'inventory', 'model_dir'}  # events or a Pub/Sub source: checked at launch


def test_metadata_regexes_accept_defaults_and_examples(params):
  actions = launcher.option_actions()
  for name, p in params.items():
    for r in p['regexes']:
      re.compile(r)
    action = actions.get(name)
    value = _example(p, action)
    assert _matches(p, value), f'{name}: {p["regexes"]} rejects its own default/example {value!r}'
    assert not _matches(p, ''), f'{name}: accepts an empty value'
    assert not _matches(p, value + '\n' + value), f'{name}: accepts a newline'
    if action is not None and action.default is not None:
      assert f'Default: {value}.' in p['helpText'], f'{name}: helpText does not state the default {value}'
  # Values of the right shape but wrong content are refused.
  for name, bad in (('window_size', '0'), ('window_size', '-5'), ('threshold', 'high'),
                    ('command', 'deploy'), ('promote', 'maybe'), ('events', '/local/path/*'),
                    ('model_version', 'latest'), ('taxonomy_files', 'gs://a.csv,,gs://b.csv')):
    assert not _matches(params[name], bad), f'{name} accepts {bad!r}'


def test_format_parameter_accepts_every_registered_format(params):
  from postauth.transforms import formats
  for name in formats.BY_NAME:
    assert _matches(params['format'], name), f'format regex rejects {name}'


def test_model_version_parameter_accepts_a_real_version(params, model_dir):
  from postauth.models.artifact import resolve_version
  assert _matches(params['model_version'], resolve_version(model_dir))


def _template_argv(params):
  actions = launcher.option_actions()
  return [f'--{n}={_example(p, actions.get(n))}' for n, p in params.items()]


DATAFLOW_ARGS = [  # what the Flex Template launcher adds to the parameters
    '--runner=DataflowRunner', '--project=my-project', '--region=europe-west1',
    '--job_name=postauth-run-1', '--temp_location=gs://b/tmp', '--staging_location=gs://b/staging',
    '--template_location=gs://b/staging/template_launches/1/job_object',
    '--setup_file=/template/setup.py', '--sdk_container_image=europe-west1-docker.pkg.dev/p/r/postauth:0.1.0']


def test_launcher_parses_template_parameters_into_pipeline_options(params):
  argv = [a for a in _template_argv(params)
          if a.split('=')[0] not in ('--command', '--promote', '--force', '--taxonomy_files',
                                     '--subscription', '--topic', '--timestamp_attribute',
                                     '--events_watch')]
  argv += ['--command=run', '--promote=false', '--taxonomy_files=gs://b/t1.csv,gs://b/t2.csv']
  command, postauth, beam_args = launcher.translate(argv + DATAFLOW_ARGS)
  assert command == 'run'
  assert beam_args == DATAFLOW_ARGS
  options = PipelineOptions(postauth + beam_args)
  actions = launcher.option_actions()
  values = {a[2:].split('=', 1)[0]: a.split('=', 1)[1] for a in argv}
  for cls in opts.ALL_OPTIONS:
    view = options.view_as(cls)
    for dest, action in actions.items():
      if not hasattr(view, dest) or dest not in values:
        continue
      got = getattr(view, dest)
      if dest == 'taxonomy_files':
        assert got == ['gs://b/t1.csv', 'gs://b/t2.csv']
      elif dest == 'sinks':  # comma-separated parameter -> one --sink per URI
        assert got == values[dest].split(',') and len(got) == 2
      elif dest == 'promote':
        assert got is False
      else:
        assert got == (action.type or str)(values[dest]), dest
        assert type(got) is type(action.default if action.default is not None else ''), dest
  # retrain-only parameters become `postauth retrain` flags
  assert f'--days={values["days"]}' in postauth and f'--keep={values["keep"]}' in postauth
  assert '--labels-file=gs://my-bucket/postauth/labels.json' in postauth
  # Dataflow's own options reach Beam untouched.
  assert options.view_as(StandardOptions).runner == 'DataflowRunner'
  gcp = options.view_as(GoogleCloudOptions)
  assert (gcp.project, gcp.region, gcp.template_location) == (
      'my-project', 'europe-west1', 'gs://b/staging/template_launches/1/job_object')
  assert options.view_as(SetupOptions).setup_file == '/template/setup.py'
  assert options.view_as(WorkerOptions).sdk_container_image.endswith('postauth:0.1.0')
  preflight.validate_run(options)  # a complete `run` launch passes validation
  # A streaming launch reads Pub/Sub instead of files.
  stream = [a for a in argv if not a.startswith(('--events=', '--command='))] + [
      '--command=run', f'--subscription={_example(params["subscription"], None)}',
      f'--timestamp_attribute={_example(params["timestamp_attribute"], None)}']
  command, postauth, beam_args = launcher.translate(stream + DATAFLOW_ARGS + ['--streaming'])
  options = PipelineOptions(postauth + beam_args)
  assert options.view_as(opts.PubSubSourceOptions).subscription.endswith('/subscriptions/cloudtrail')
  preflight.validate_run(options)
  # Or watches a bucket for new log files.
  watch = [a for a in argv if not a.startswith(('--events=', '--command='))] + [
      '--command=run', f'--events_watch={_example(params["events_watch"], None)}']
  command, postauth, beam_args = launcher.translate(watch + DATAFLOW_ARGS + ['--streaming'])
  options = PipelineOptions(postauth + beam_args)
  assert options.view_as(opts.EventOptions).events_watch.startswith('gs://my-audit-logs/AWSLogs/')
  preflight.validate_run(options)


def test_launcher_rejects_bad_parameters_before_submitting(capsys):
  assert launcher.main(['--command=deploy', '--events=gs://b/e']) == 2
  assert '--command must be one of run, train, retrain' in capsys.readouterr().err
  assert launcher.main(['--command=train', '--promote=maybe']) == 2
  assert 'true or false' in capsys.readouterr().err
  # run without findings: the CLI's own validation, still before any job exists
  assert launcher.main(['--events=gs://b/e', '--inventory=gs://b/i.csv', '--model_dir=gs://b/m',
                        '--template_location=gs://b/t']) == 2
  assert '--findings' in capsys.readouterr().err
  # a misspelt postauth flag on the template path too (Dataflow would get it and drop it)
  assert launcher.main(['--events=gs://b/e', '--inventory=gs://b/i.csv', '--model_dir=gs://b/m',
                        '--findings=gs://b/f.jsonl', '--treshold=5', '--runner=DataflowRunner',
                        '--template_location=gs://b/t']) == 2
  assert 'unknown argument --treshold (did you mean --threshold?)' in capsys.readouterr().err


def test_launcher_leaves_already_spelled_postauth_flags_alone():
  command, postauth, beam_args = launcher.translate(
      ['--command=train', '--model-dir', 'gs://b/m', '--events=gs://b/e', '--runner', 'DataflowRunner'])
  assert command == 'train'
  assert postauth == ['--model-dir', 'gs://b/m', '--events=gs://b/e']
  assert beam_args == ['--runner', 'DataflowRunner']


# -- Dataflow Flex Template: Dockerfile, Cloud Build, README ----------------------------------

def _dockerfile():
  text = re.sub(r'\\\n', ' ', _read('templates', 'dataflow', 'Dockerfile'))
  return [l.strip() for l in text.splitlines() if l.strip() and not l.strip().startswith('#')]


def test_dockerfile_names_files_that_exist():
  lines = _dockerfile()
  froms = [l.split()[1] for l in lines if l.startswith('FROM ')]
  assert 'gcr.io/dataflow-templates-base/python311-template-launcher-base' in froms
  assert froms[-1] == 'apache/beam_python3.11_sdk:2.77.0'  # the image that runs
  args, env, workdir, image_files = {}, {}, '/', {}

  def expand(s):
    return re.sub(r'\$\{?(\w+)\}?', lambda m: {**args, **env}.get(m.group(1), m.group(0)), s).strip('"')

  for line in lines:
    op, _, rest = line.partition(' ')
    if op == 'ARG':
      k, _, v = rest.partition('=')
      args[k] = v
    elif op == 'WORKDIR':
      workdir = expand(rest)
    elif op == 'ENV':
      k, _, v = rest.partition('=')
      env[k] = expand(v)
    elif op == 'COPY' and '--from=' not in rest:
      *sources, raw_dest = shlex.split(rest)
      dest = os.path.normpath(os.path.join(workdir, expand(raw_dest)))
      for src in sources:
        assert os.path.exists(os.path.join(ROOT, src)), f'COPY {src}: no such file in the build context'
        if os.path.isdir(os.path.join(ROOT, src)):  # a directory's contents go into dest
          image_files[dest] = src
        elif raw_dest.endswith('/') or len(sources) > 1:
          image_files[os.path.join(dest, os.path.basename(src))] = src
        else:
          image_files[dest] = src
    elif op == 'COPY':
      assert '/opt/google/dataflow/python_template_launcher' in rest

  def in_image(path):
    for target, src in image_files.items():
      if path == target:
        return os.path.exists(os.path.join(ROOT, src))
      if path.startswith(target + '/'):
        return os.path.exists(os.path.join(ROOT, src, os.path.relpath(path, target)))
    return False

  assert env['FLEX_TEMPLATE_PYTHON_PY_FILE'].endswith('templates/dataflow/main.py')
  assert in_image(env['FLEX_TEMPLATE_PYTHON_PY_FILE'])
  assert os.path.basename(env['FLEX_TEMPLATE_PYTHON_SETUP_FILE']) == 'setup.py'
  assert in_image(env['FLEX_TEMPLATE_PYTHON_SETUP_FILE'])
  for package in ('pipeline', 'transforms', 'models', 'domain'):  # what setup.py installs (as postauth.*)
    assert in_image(os.path.join(workdir, package, '__init__.py')), package
  assert any(l.startswith('RUN pip install') for l in lines)
  assert lines[-1] == 'ENTRYPOINT ["/opt/apache/beam/boot"]'


def test_main_py_is_the_launcher():
  tree = ast.parse(_read('templates', 'dataflow', 'main.py'))
  imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == 'postauth.pipeline'
              for a in n.names}
  assert imported == {'launcher'}
  assert 'launcher.main()' in _read('templates', 'dataflow', 'main.py')


def test_cloud_build_config_builds_the_dockerfile():
  import yaml
  config = yaml.safe_load(_read('templates', 'dataflow', 'cloudbuild.yaml'))
  args = config['steps'][0]['args']
  assert args[0] == 'build' and os.path.isfile(os.path.join(ROOT, args[args.index('-f') + 1]))
  assert config['images'] == ['${_IMAGE}']


SHELL_VARS = {'PROJECT': 'my-project', 'REGION': 'europe-west1', 'BUCKET': 'my-bucket',
              'IMAGE': 'europe-west1-docker.pkg.dev/my-project/postauth/postauth:0.1.0'}


def _shell_commands(text, program):
  for block in re.findall(r'```(?:sh|bash)?\n(.*?)```', text, re.S):
    for line in re.sub(r'\\\n\s*', ' ', block).splitlines():
      line = re.split(r'\s+#\s', line)[0].strip()
      if line.startswith(program + ' '):
        yield line


def test_readme_launch_parameters_are_template_parameters(params):
  launches = [c for c in _shell_commands(_read('templates', 'dataflow', 'README.md'), 'gcloud')
              if 'flex-template run' in c]
  assert {'run', 'train', 'retrain'} == {re.search(r'command=(\w+)', c).group(1) for c in launches}
  for cmd in launches:
    given = {}
    for token in shlex.split(cmd):
      if token.startswith('--parameters='):
        for pair in token[len('--parameters='):].split(','):
          k, _, v = pair.partition('=')
          given[k] = re.sub(r'\$(\w+)', lambda m: SHELL_VARS[m.group(1)], v)
    given.pop('sdk_container_image')
    assert {'events', 'inventory', 'model_dir'} <= set(given)
    for k, v in given.items():
      assert k in params, f'{k} is not a template parameter'
      assert _matches(params[k], v), f'{k}={v} fails {params[k]["regexes"]}'


GCLOUD = shutil.which('gcloud')
needs_gcloud = pytest.mark.skipif(GCLOUD is None, reason='Google Cloud CLI (gcloud) not installed: '
                                  'it is not a package the project can install from PyPI or Debian')
ANSI = re.compile(r'\x1b\[[0-9;]*m')


def _substitute(cmd):
  return re.sub(r'\$(\w+)', lambda m: SHELL_VARS.get(m.group(1), m.group(0)), cmd)


SHELL_VARS['TEMPLATE'] = 'gs://my-bucket/templates/postauth.json'


@needs_gcloud
def test_readme_build_command_gives_a_spec_with_the_metadata(metadata):
  """The README's own `flex-template build` command, with --print-only (no upload, offline)."""
  import yaml
  cmd = next(c for c in _shell_commands(_read('templates', 'dataflow', 'README.md'), 'gcloud')
             if 'flex-template build' in c)
  out = subprocess.run(shlex.split(_substitute(cmd)) + ['--print-only'], capture_output=True,
                       text=True, timeout=120, cwd=ROOT)
  assert out.returncode == 0, out.stderr
  spec = json.loads(yaml.safe_load(out.stdout))
  expected = {k: v for k, v in metadata.items() if v is not False}  # gcloud drops false defaults
  assert spec['metadata'] == expected
  assert spec['sdkInfo']['language'] == 'PYTHON' and spec['image'] == SHELL_VARS['IMAGE']


# The recipe-specific commands; the READMEs' other gcloud lines (artifacts repositories create,
# auth configure-docker, builds submit, scheduler jobs run) use one or two common flags.
CHECKED = {('dataflow', 'flex-template', 'run'), ('scheduler', 'jobs', 'create', 'http')}


@needs_gcloud
def test_gcloud_launch_and_schedule_commands_use_real_flags(tmp_path):
  commands = {}
  for folder in ('dataflow', 'scheduling', 'flink'):
    for cmd in _shell_commands(_read('templates', folder, 'README.md'), 'gcloud'):
      tokens = shlex.split(cmd)
      path = []
      for t in tokens[1:]:
        if not re.fullmatch(r'[a-z][a-z0-9-]*', t):
          break
        path.append(t)
      if tuple(path) in CHECKED:
        commands.setdefault(tuple(path), set()).update(t.split('=')[0] for t in tokens if t.startswith('--'))
  assert set(commands) == CHECKED
  procs = {path: subprocess.Popen([GCLOUD, *path, '--help'], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, cwd=str(tmp_path))
           for path in commands}
  for path, proc in procs.items():
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, f'gcloud {" ".join(path)}: {err}'
    known = set(re.findall(r'--[a-z][a-z0-9-]*', ANSI.sub('', out)))
    unknown = commands[path] - known
    assert not unknown, f'gcloud {" ".join(path)} has no {sorted(unknown)}'


# -- Flink -----------------------------------------------------------------------------------

def _beam_option_parsers():
  """Flags and dests of every Beam PipelineOptions class other than postauth's."""
  flags, dests = set(), set()

  def subclasses(cls):
    for sub in cls.__subclasses__():
      yield sub
      yield from subclasses(sub)

  for cls in set(subclasses(PipelineOptions)) - set(opts.ALL_OPTIONS):
    if not cls.__module__.startswith('apache_beam'):
      continue
    parser = _BeamArgumentParser(allow_abbrev=False, add_help=False)
    try:
      cls._add_argparse_args(parser)
    except Exception:  # a class that only works beside another one; skip it
      continue
    for a in parser._actions:
      flags.update(a.option_strings)
      dests.add(a.dest)
  return flags, dests


def test_postauth_options_collide_with_no_beam_option():
  flags, dests = _beam_option_parsers()
  assert '--flink_master' in flags and '--labels' in flags  # the census found Beam's options
  actions = launcher.option_actions()
  ours = {f for a in actions.values() for f in a.option_strings}
  assert not ours & flags, f'postauth flags shadowing Beam options: {ours & flags}'
  assert not set(actions) & dests, f'postauth dests shadowing Beam options: {set(actions) & dests}'
  # template-only names must not shadow Beam options either (they are passed as --name=value)
  assert not set(launcher.template_parameters()) & dests


FLINK = ['--runner=FlinkRunner', '--flink_master=flink-jobmanager:8081', '--flink_version=1.19',
         '--parallelism=8', '--max_parallelism=128', '--environment_type=DOCKER',
         '--environment_config=europe-west1-docker.pkg.dev/p/r/postauth:0.1.0',
         '--checkpointing_interval=60000', '--state_backend=rocksdb']


def test_flink_runner_options_parse_with_postauth_options(sample, model_dir):
  options = PipelineOptions([f'--events={sample["dir"]}/live/*', f'--inventory={sample["inventory"]}',
                             f'--model-dir={model_dir}', '--findings=/tmp/f.jsonl', '--streaming',
                             '--allowed-lateness=600'] + FLINK)
  flink = options.view_as(FlinkRunnerOptions)
  assert (flink.flink_master, flink.flink_version, flink.parallelism, flink.max_parallelism) == (
      'flink-jobmanager:8081', '1.19', 8, 128)
  assert options.view_as(PortableOptions).environment_type == 'DOCKER'
  assert options.view_as(StandardOptions).runner == 'FlinkRunner'
  assert options.view_as(StandardOptions).streaming is True
  assert options.view_as(opts.DetectOptions).model_dir == model_dir
  assert options.view_as(opts.WindowOptions).allowed_lateness == 600
  preflight.validate_run(options)
  # Job-server options are not Python options: kept for the job server (uber-jar path) only.
  retained = options.get_all_options(retain_unknown_options=True)
  assert retained['checkpointing_interval'] == '60000' and retained['state_backend'] == 'rocksdb'
  assert 'checkpointing_interval' not in options.get_all_options()


def test_flink_readme_commands_use_known_options():
  python_flags, _ = _beam_option_parsers()
  postauth_flags = {f for a in launcher.option_actions().values() for f in a.option_strings}
  text = _read('templates', 'flink', 'README.md')
  # the table's job-server options are the only flags neither Beam Python nor postauth knows
  job_server = set(re.findall(r'`(--[a-z_]+)', text.split('## Options that matter')[1])) - python_flags
  assert '--checkpointing_interval' in job_server
  commands = list(_shell_commands(text, 'postauth'))
  assert {c.split()[1] for c in commands} == {'run', 'train'}
  assert any('--runner=FlinkRunner' in c for c in commands)
  assert any('--checkpointing_interval' in c for c in commands)
  for cmd in commands:
    flags = {t.split('=')[0] for t in shlex.split(cmd.replace('...', '')) if t.startswith('--')}
    unknown = flags - python_flags - postauth_flags - job_server
    assert not unknown, f'{cmd[:40]}...: unknown flags {sorted(unknown)}'


# -- Scheduling ------------------------------------------------------------------------------

def _dag_source():
  return _read('templates', 'scheduling', 'postauth_retrain_dag.py')


def _dag_literal(name):
  for node in ast.parse(_dag_source()).body:
    if isinstance(node, ast.Assign) and any(getattr(t, 'id', None) == name for t in node.targets):
      return ast.literal_eval(node.value)
  raise AssertionError(f'{name} not found in the DAG')


def test_airflow_dag_compiles_and_runs_retrain_through_the_launcher(params, tmp_path):
  path = os.path.join(SCHEDULING, 'postauth_retrain_dag.py')
  py_compile.compile(path, cfile=str(tmp_path / 'dag.pyc'), doraise=True)
  calls = [n for n in ast.walk(ast.parse(_dag_source())) if isinstance(n, ast.Call)
           and getattr(n.func, 'id', None) == 'BeamRunPythonPipelineOperator']
  assert len(calls) == 1
  kw = {k.arg: k.value for k in calls[0].keywords}
  assert ast.literal_eval(kw['py_file']) == 'postauth.pipeline.launcher'  # python -m postauth.pipeline.launcher
  assert ast.literal_eval(kw['py_options']) == ['-m']
  options = _dag_literal('PIPELINE_OPTIONS')
  for k, v in options.items():
    assert k in params, f'{k} is not a launcher parameter'
    assert _matches(params[k], str(v)), f'{k}={v!r} fails {params[k]["regexes"]}'
  assert 'labels' not in options  # Airflow's Beam hook reads `labels` as job labels
  # The operator passes options as --name=value after --runner=...
  argv = ['--runner=DirectRunner'] + [f'--{k}={v}' for k, v in options.items()]
  command, postauth, beam_args = launcher.translate(argv)
  assert command == 'retrain' and beam_args == ['--runner=DirectRunner']
  flags = {a.split('=')[0] for a in postauth}
  assert RETRAIN_REQUIRED <= flags <= RETRAIN_FLAGS


def test_airflow_dag_imports_where_airflow_is_installed():
  pytest.importorskip('airflow.providers.apache.beam.operators.beam',
                      reason='apache-airflow and its Beam provider are not installed (too large '
                             'to install for a DAG check); the DAG was compiled and its options checked')
  import importlib.util
  spec = importlib.util.spec_from_file_location('postauth_retrain_dag',
                                                os.path.join(SCHEDULING, 'postauth_retrain_dag.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  assert module.dag.dag_id == 'postauth_retrain'
  assert [t.task_id for t in module.dag.tasks] == ['retrain']


CRON_FIELDS = ((0, 59, {}), (0, 23, {}), (1, 31, {}),
               (1, 12, {m: i + 1 for i, m in enumerate(
                   'jan feb mar apr may jun jul aug sep oct nov dec'.split())}),
               (0, 7, {d: i for i, d in enumerate('sun mon tue wed thu fri sat'.split())}))


def _cron_field_ok(field, lo, hi, names):
  for part in field.split(','):
    base, slash, step = part.partition('/')
    if slash and not (step.isdigit() and int(step) > 0):
      return False
    if base == '*':
      continue
    ends = base.split('-')
    if len(ends) > 2:
      return False
    values = []
    for v in ends:
      v = names.get(v.lower(), v)
      if not str(v).isdigit() or not lo <= int(v) <= hi:
        return False
      values.append(int(v))
    if len(values) == 2 and values[0] > values[1]:
      return False
  return True


def test_cron_field_checker_rejects_bad_schedules():
  for schedule in ('60 2 * * *', '30 24 * * *', '* * 0 * *', '* * * 13 *', '* * * * 8',
                   '*/0 * * * *', '5-1 * * * *', 'x * * * *'):
    assert not all(_cron_field_ok(f, *spec) for f, spec in zip(schedule.split(), CRON_FIELDS)), schedule
  for schedule in ('30 2 * * *', '*/15 0-6,22 1 jan-mar mon-fri', '0 0 1,15 * 7'):
    assert all(_cron_field_ok(f, *spec) for f, spec in zip(schedule.split(), CRON_FIELDS)), schedule


def _cron_jobs():
  jobs = []
  for line in _read('templates', 'scheduling', 'crontab').splitlines():
    line = line.strip()
    if not line or line.startswith('#') or re.match(r'^[A-Z_]+=', line):
      continue
    jobs.append(line)
  return jobs


def test_crontab_runs_postauth_retrain_on_a_valid_schedule():
  jobs = _cron_jobs()
  assert len(jobs) == 1
  fields = jobs[0].split(None, 5)
  assert len(fields) == 6, 'five schedule fields and a command'
  for field, spec in zip(fields[:5], CRON_FIELDS):
    assert _cron_field_ok(field, *spec), f'bad cron field {field!r}'
  command = fields[5]
  assert '%' not in command.replace('\\%', ''), 'cron turns an unescaped % into a newline'
  tokens = shlex.split(command)
  assert os.path.basename(tokens[0]) == 'postauth' and tokens[1] == 'retrain'
  flags = {t.split('=')[0] for t in tokens if t.startswith('--')}
  assert RETRAIN_REQUIRED <= flags <= RETRAIN_FLAGS, flags
  assert '>>' in tokens, 'output goes to a log file, not to cron mail'


def test_crontab_flags_are_those_of_the_retrain_command():
  """Against the real command once `postauth retrain` is on this branch."""
  from postauth.pipeline.cli import COMMANDS
  if 'retrain' not in COMMANDS:
    pytest.skip('`postauth retrain` is not on this branch yet (issue 5); '
                'the crontab was checked against its specified flags')
  out = subprocess.run([sys.executable, '-m', 'postauth.pipeline.cli', 'retrain', '--help'],
                       capture_output=True, text=True, cwd=ROOT)
  tokens = shlex.split(_cron_jobs()[0].split(None, 5)[5])
  for flag in {t.split('=')[0] for t in tokens if t.startswith('--')}:
    assert flag in out.stdout + out.stderr, f'postauth retrain --help does not list {flag}'


def test_cloud_scheduler_body_launches_the_template_with_its_parameters(params):
  body = json.loads(_read('templates', 'scheduling', 'cloud-scheduler-retrain.json'))
  launch = body['launchParameter']
  assert launch['containerSpecGcsPath'].startswith('gs://') and launch['jobName']
  parameters = launch['parameters']
  assert parameters['command'] == 'retrain'
  for k, v in parameters.items():
    assert k in params, f'{k} is not in metadata.json'
    assert isinstance(v, str), f'{k}: flexTemplates:launch parameters are strings'
    assert _matches(params[k], v), f'{k}={v!r} fails {params[k]["regexes"]}'
  assert {n for n, p in params.items() if not p['isOptional']} <= set(parameters)
  env = launch['environment']
  assert env['sdkContainerImage'] and env['tempLocation'].startswith('gs://')
  assert isinstance(env['maxWorkers'], int)
  # The scheduler command in the README sends this file to flexTemplates:launch.
  readme = _read('templates', 'scheduling', 'README.md')
  cmd = next(c for c in _shell_commands(readme, 'gcloud') if 'jobs create http' in c)
  assert '--message-body-from-file=templates/scheduling/cloud-scheduler-retrain.json' in cmd
  assert 'flexTemplates:launch' in cmd and '--oauth-service-account-email' in cmd
  assert re.search(r'--schedule="([^"]+)"', cmd).group(1) == _dag_schedule()


def _dag_schedule():
  calls = [n for n in ast.walk(ast.parse(_dag_source())) if isinstance(n, ast.Call)
           and getattr(n.func, 'id', None) == 'DAG']
  return ast.literal_eval({k.arg: k.value for k in calls[0].keywords}['schedule'])
