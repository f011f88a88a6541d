"""Flex Template entry point (FLEX_TEMPLATE_PYTHON_PY_FILE).

The Dataflow launcher calls this file with every template parameter as ``--name=value``
plus the job's own options (``--runner=DataflowRunner --project ... --template_location
...``). ``pipeline.launcher`` turns the parameters into postauth's flags and builds the
same pipeline as the ``postauth`` command, then returns without waiting, as Dataflow
requires.
"""
import sys

from postauth.pipeline import launcher

if __name__ == '__main__':
  sys.exit(launcher.main())
