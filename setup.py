"""postauth: catch abuse of non-human identities after they authenticate (Apache Beam).

Packaged the Beam way (setup.py) so Dataflow workers get the code with --setup_file.
The repository's folders install under one ``postauth`` namespace (``postauth.pipeline``,
``postauth.transforms``, ``postauth.models``, ``postauth.domain``), so nothing named
``pipeline`` or ``models`` lands in site-packages beside a platform's own modules.
"""
import os

import setuptools

LAYERS = ('domain', 'models', 'transforms', 'pipeline')  # lowest first: each imports only those before it

# The per-window modules, compiled to C extensions with Cython as Beam compiles its own hot
# modules (docs/compiled.md): the same source, ~10% less CPU for a batch day. Built where
# Cython is importable when this file runs (`make compiled`, the Flex Template image); pure
# Python elsewhere (an sdist a worker installs at boot, POSTAUTH_PURE_PYTHON=1, no compiler),
# with identical results. A module listed here must not hand Beam a lambda or closure defined
# in it (a compiled function pickles by reference only), nor a function with Map's extra
# arguments (Beam calls a compiled one with the element alone): bind them by keyword.
COMPILED = (
    'domain/emitter.py', 'domain/event.py', 'domain/evidence.py', 'domain/evidence_pool.py',
    'domain/high_impact.py', 'domain/origin.py', 'domain/resource_kind.py', 'domain/taxonomy.py',
    'domain/window.py',
    'models/features.py', 'models/fleet.py', 'models/forest_arrays.py', 'models/history.py',
    'models/model.py', 'models/profile.py',
    'transforms/agent_rules.py', 'transforms/aggregate.py', 'transforms/corroborate.py',
    'transforms/finding_builder.py', 'transforms/finding_content.py', 'transforms/finding_json.py',
    'transforms/findings.py', 'transforms/fleet_notice.py', 'transforms/history.py',
    'transforms/history_cell.py', 'transforms/judgment.py', 'transforms/packed.py',
    'transforms/rules.py', 'transforms/sampled_size.py', 'transforms/score.py', 'transforms/triage.py',
    'transforms/versions.py', 'transforms/window_context.py', 'transforms/windowing.py',
)
# Pure-Python semantics: annotations are not C types (a ``List`` parameter still takes a tuple).
DIRECTIVES = {'language_level': 3, 'binding': True, 'annotation_typing': False}


def extensions():
  """The compiled modules' extensions, or none without Cython; optional, so a module whose
  build fails (no compiler) stays pure Python. -O3 -g (Python's flags) doubles the build."""
  if os.environ.get('POSTAUTH_PURE_PYTHON'):
    return []
  try:
    from Cython.Build import cythonize
  except ImportError:
    return []
  return cythonize([setuptools.Extension('postauth.' + path[:-len('.py')].replace('/', '.'), [path],
                                         extra_compile_args=['-O2', '-g0'], optional=True)
                    for path in COMPILED], compiler_directives=DIRECTIVES, quiet=True)


setuptools.setup(
    name='postauth',
    version='0.1.0',
    description='Apache Beam pipeline that detects abuse of non-human identities from post-auth activity',
    python_requires='>=3.10',
    packages=['postauth.' + p for p in setuptools.find_packages(
        include=[name for layer in LAYERS for name in (layer, layer + '.*')])],
    package_dir={'postauth.' + layer: layer for layer in LAYERS},
    # Data files shipped with the code (tests/test_packaging.py checks every one gets installed).
    package_data={'postauth.domain': ['taxonomy/*.csv'],
                  'postauth.transforms': ['schemas/*.avsc', 'schemas/*.json'],
                  '': ['*.json', '*.avsc', 'schemas/*.json', 'schemas/*.avsc']},
    install_requires=[
        'apache-beam==2.77.0',
        'google-cloud-pubsub>=2.20,<3',
        'fastavro>=1.9',
        'scikit-learn>=1.5,<1.10',
        'numpy>=1.26',
        'orjson>=3.9',
        'zstandard>=0.18,<1',  # packed shuffles (transforms/packed.py); Beam requires it too
        'opentelemetry-proto>=1.27,<2',  # OTLP trace messages (transforms/formats/otel.py)
        'skops>=0.10',
        'matplotlib>=3.8',  # training report plot (models/report.py, Agg canvas only)
    ],
    extras_require={
        'gcp': ['apache-beam[gcp]==2.77.0'],
        # setuptools>=70.1 builds wheels itself: the packaging test installs the --setup_file
        # sdist offline (--no-build-isolation), as the venv's bundled setuptools 65 cannot.
        # [gcp] in tests: the BigQuery sink's WriteToBigQuery is built (not run) in tests.
        # bench/pipeline.py: Beam's AnomalyDetection peer (PyOD IForest) and the scaling plot.
        'bench': ['pyod>=2', 'matplotlib>=3.7'],
        # OCSF findings are validated against OCSF's own schema (ocsf-json-schema + jsonschema);
        # the report's screenshot is checked with Pillow. Spans are sent through the collector
        # (`make otelcol`) by the OpenTelemetry SDK's own OTLP/HTTP exporter.
        'compile': ['cython>=3.0,<4'],  # the C extensions (COMPILED); `make compiled`
        'test': ['cython>=3.0,<4', 'pytest>=8', 'pytest-xdist>=3.5,<4', 'hypothesis>=6.100', 'setuptools>=70.1', 'apache-beam[gcp]==2.77.0',
                 'ocsf-json-schema>=1.2', 'jsonschema>=4.20', 'pillow>=10',
                 'opentelemetry-exporter-otlp-proto-http>=1.20'],
    },
    entry_points={'console_scripts': ['postauth=postauth.pipeline.cli:main']},
    ext_modules=extensions(),
)
