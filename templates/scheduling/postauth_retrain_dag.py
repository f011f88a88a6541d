"""Airflow DAG: retrain postauth's model every day, promoting only a model that is not worse.

Uses the Apache Beam provider's ``BeamRunPythonPipelineOperator`` to run
``python -m postauth.pipeline.launcher --command=retrain ...`` (the same entry point as the Dataflow
Flex Template) with the interpreter of an environment where postauth is installed. The
operator passes ``PIPELINE_OPTIONS`` as ``--name=value``; the launcher maps them to
``postauth retrain --events ... --inventory ... --model-dir ... --days N --keep K``.

Requirements on the Airflow workers: ``apache-airflow-providers-apache-beam`` and a Python
environment with postauth (``pip install postauth-0.1.0.tar.gz`` or ``pip install -e .``),
named by POSTAUTH_PYTHON. With ``runner=DataflowRunner`` (and the Google provider's
``dataflow_config``) the training job runs on Dataflow while this task waits for the gate.

Roll back a bad promotion with ``postauth rollback --model-dir DIR``.
"""
from __future__ import annotations

import datetime
import os

from airflow import DAG
from airflow.providers.apache.beam.operators.beam import BeamRunPythonPipelineOperator

# Edit for your deployment (or set the environment variables on the Airflow workers).
POSTAUTH_PYTHON = os.environ.get('POSTAUTH_PYTHON', '/opt/postauth/.venv/bin/python')
RUNNER = os.environ.get('POSTAUTH_RUNNER', 'DirectRunner')

# Template-parameter names (see templates/dataflow/metadata.json); values are examples.
PIPELINE_OPTIONS = {
    'command': 'retrain',
    'events': 'gs://my-postauth-bucket/cloudtrail/*/*/*/*.json.gz',
    'inventory': 'gs://my-postauth-bucket/inventory.csv',
    'model_dir': 'gs://my-postauth-bucket/models',
    'days': 14,
    'keep': 5,
}

with DAG(
    dag_id='postauth_retrain',
    description='Daily gated retraining of the postauth detection model',
    schedule='30 2 * * *',  # 02:30 UTC, after the previous day's logs have landed
    start_date=datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc),
    catchup=False,
    max_active_runs=1,
    default_args={'retries': 1, 'retry_delay': datetime.timedelta(minutes=15)},
    tags=['postauth'],
) as dag:
  retrain = BeamRunPythonPipelineOperator(
      task_id='retrain',
      py_file='postauth.pipeline.launcher',
      py_options=['-m'],
      py_interpreter=POSTAUTH_PYTHON,
      runner=RUNNER,
      pipeline_options=PIPELINE_OPTIONS,
      execution_timeout=datetime.timedelta(hours=3),
  )
