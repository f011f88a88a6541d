"""``--setup_file`` packaging: the sdist Beam's stager builds installs and runs in a clean venv.

Dataflow (and a Flink DOCKER harness) install exactly this sdist on every worker, so a
module or data file missing from it fails there, not here. The sdist is built by Beam's
own ``Stager._build_setup_package`` (what ``--setup_file`` runs), installed with
``--no-deps`` into a fresh venv whose dependencies come from the project's venv through a
``.pth`` line, and used from another directory so nothing is imported from the source tree.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import tarfile
import textwrap

import pytest
from conftest import require_compiled_modules

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))
PACKAGES = ('pipeline', 'transforms', 'models', 'domain')  # installed as postauth.<name>
FIXTURES = os.path.join(ROOT, 'tests', 'fixtures')


def _shipped_files():
  """Every file of the packages, relative to the root: modules and data alike (computed)."""
  files = []
  for top in PACKAGES:
    for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, top)):
      dirnames[:] = [d for d in dirnames if d != '__pycache__']
      files += [os.path.relpath(os.path.join(dirpath, f), ROOT) for f in filenames
                if not f.endswith(('.pyc', '.pyo', '.c', '.so')) and not f.startswith('.')]
  return sorted(files)


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
  from apache_beam.runners.portability.stager import Stager
  tmp = tmp_path_factory.mktemp('packaging')
  dist = tmp / 'dist'
  dist.mkdir()
  sdist = Stager._build_setup_package(os.path.join(ROOT, 'setup.py'), str(dist))
  venv = tmp / 'venv'
  subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(venv)], check=True)
  python = str(venv / 'bin' / 'python')
  site = subprocess.run([python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                        capture_output=True, text=True, check=True).stdout.strip()
  # Dependencies from the project's venv; a plain path line does not run that venv's .pth
  # files, so its editable install of postauth stays invisible here.
  with open(os.path.join(site, 'project-deps.pth'), 'w') as f:
    f.write(sysconfig.get_paths()['purelib'] + '\n')
  # Pure Python, as a worker without Cython gets it: the rest of the suite runs the compiled
  # modules (`make compiled`), this install the same code uncompiled.
  subprocess.run([sys.executable, '-m', 'pip', '--python', python, 'install', '-q', '--no-deps',
                  '--no-build-isolation', '--no-index', sdist], check=True, cwd=str(tmp),
                 env=dict(os.environ, POSTAUTH_PURE_PYTHON='1'))
  return {'sdist': sdist, 'venv': venv, 'python': python, 'site': site, 'cwd': tmp}


def test_sdist_holds_every_module_and_data_file(installed):
  with tarfile.open(installed['sdist']) as tar:
    names = {n.split('/', 1)[1] for n in tar.getnames() if '/' in n}
  missing = [f for f in _shipped_files() if f not in names]
  assert not missing, f'missing from the sdist (setup.py package_data / MANIFEST.in): {missing}'
  assert 'setup.py' in names


def test_every_module_and_data_file_is_installed(installed):
  files = _shipped_files()
  assert any(f.endswith('.csv') for f in files)  # the taxonomy tables are package data
  missing = [f for f in files if not os.path.isfile(os.path.join(installed['site'], 'postauth', f))]
  assert not missing, f'not installed from the sdist (setup.py package_data): {missing}'


def test_the_sdist_ships_sources_only(installed):
  """No C nor built extension in the sdist (MANIFEST.in): a worker that installs it at boot
  runs pure Python, or compiles with its own Cython (setup.py ``extensions``)."""
  with tarfile.open(installed['sdist']) as tar:
    built = [n for n in tar.getnames() if n.endswith(('.c', '.so'))]
  assert not built, built


def _run(installed, *args, **kw):
  return subprocess.run(list(args), capture_output=True, text=True, cwd=str(installed['cwd']),
                        env=dict(os.environ, PYTHONPATH=''), **kw)


def test_only_the_postauth_namespace_is_installed(installed):
  """Nothing named pipeline, transforms, models or domain lands in site-packages (issue 15)."""
  tops = sorted(n for n in os.listdir(installed['site'])
                if not n.endswith(('.dist-info', '.pth', '.egg-info')) and n != '__pycache__')
  assert tops == ['postauth'], tops
  for bare in PACKAGES:
    out = _run(installed, installed['python'], '-c', f'import {bare}')
    assert out.returncode != 0 and 'ModuleNotFoundError' in out.stderr, (bare, out.stdout, out.stderr)
  out = _run(installed, installed['python'], '-c', 'import postauth.pipeline.cli, postauth.models.model')
  assert out.returncode == 0, out.stderr[-2000:]


def test_console_script_works_from_another_directory(installed):
  postauth = str(installed['venv'] / 'bin' / 'postauth')
  out = _run(installed, postauth, '--help')
  assert out.returncode == 0, out.stderr
  assert 'commands:' in out.stdout and 'train' in out.stdout
  out = _run(installed, postauth, 'run', '--help')
  assert out.returncode == 0, out.stderr
  for flag in ('--events', '--model-dir', '--findings', '--taxonomy-file'):
    assert flag in out.stdout


def test_a_pipeline_runs_on_the_installed_package(installed, tmp_path):
  """ParseFiles over the format fixtures with the installed code and its packaged taxonomy."""
  script = tmp_path / 'tiny.py'
  out_file = tmp_path / 'events.json'
  script.write_text(textwrap.dedent(f'''
      import json, sys
      import apache_beam as beam
      import postauth.pipeline, postauth.domain.taxonomy
      from postauth.transforms.parse import ParseFiles
      assert postauth.pipeline.__file__.startswith({installed['site']!r}), postauth.pipeline.__file__
      rows = []
      with beam.Pipeline(runner='FnApiRunner') as p:
        parsed = p | ParseFiles({os.path.join(FIXTURES, '*.jsonl')!r})
        (parsed.events
         | beam.Map(lambda e: (e.event_id, e.provider, e.action, e.category))
         | beam.combiners.ToList()
         | beam.Map(lambda rows: open({str(out_file)!r}, 'w').write(json.dumps(sorted(rows)))))
      print(postauth.domain.taxonomy.__file__)
  '''))
  out = _run(installed, installed['python'], str(script), timeout=120)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.strip().startswith(installed['site'])
  got = [tuple(r) for r in json.loads(out_file.read_text())]
  # The same records parsed by the source tree in this process.
  from postauth.domain.event import Event
  from postauth.transforms.parse import RecordParser
  from postauth.transforms.records import split_records
  parser, expected = RecordParser(), []
  for name in sorted(os.listdir(FIXTURES)):
    if name.endswith('.jsonl'):
      with open(os.path.join(FIXTURES, name), 'rb') as f:
        for record in split_records(f.read(), name):
          e = parser.parse(record)
          if isinstance(e, Event):
            expected.append((e.event_id, e.provider, e.action, e.category))
  assert len(got) >= 10 and got == sorted(expected)
  assert {'aws', 'gcp', 'k8s'} <= {p for _, p, _, _ in got}
  assert 'credential_create' in {c for _, _, _, c in got}  # from the packaged taxonomy CSVs


def test_the_pure_python_install_finds_what_the_compiled_tree_finds(installed, sample, model_dir, tmp_path):
  """Compiled or not, the same findings and versions, byte for byte: the compiled modules are
  the same source (setup.py ``COMPILED``), run by C instead of the interpreter."""
  site_modules = [f for _, _, fs in os.walk(os.path.join(installed['site'], 'postauth')) for f in fs]
  assert not [f for f in site_modules if f.endswith('.so')]  # the install is pure Python
  require_compiled_modules()
  args = ['run', f'--events={sample["dir"]}/live/*', f'--inventory={sample["inventory"]}',
          f'--model-dir={model_dir}', '--runner=FnApiRunner']
  outputs = {}
  for name, cmd in (('compiled', [sys.executable, '-m', 'postauth.pipeline.cli']),
                    ('pure', [str(installed['venv'] / 'bin' / 'postauth')])):
    out = tmp_path / name
    proc = _run(installed, *cmd, *args, f'--findings={out}/findings.jsonl',
                f'--dead-letters={out}/dead-letters.jsonl', timeout=300)
    assert proc.returncode == 0, (name, proc.stderr[-3000:])
    outputs[name] = {f: (out / f).read_bytes() for f in ('findings.jsonl', 'findings.versions.jsonl')}
  assert outputs['compiled']['findings.jsonl'].count(b'\n') >= 3
  assert outputs['pure'] == outputs['compiled']
