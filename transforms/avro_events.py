"""The canonical Event as Avro: the schema shipped in the package, and Event <-> Avro dict.

``transforms/schemas/event.avsc`` is the one definition other tools read; tests
check it field by field against ``domain.event.Event`` so the two cannot drift.
"""
from __future__ import annotations

import functools
import json
from importlib import resources
from typing import BinaryIO, Iterable, Iterator

import fastavro

from postauth.domain.event import Event

# Event field type -> Avro primitive used for it in event.avsc.
AVRO_TYPES = {str: 'string', float: 'double', bool: 'boolean'}


def schema_json() -> dict:
  """event.avsc as written (a plain dict, e.g. for Beam's WriteToAvro)."""
  text = resources.files('postauth.transforms').joinpath('schemas', 'event.avsc').read_text()
  return json.loads(text)


@functools.lru_cache(maxsize=1)
def parsed_schema() -> dict:
  """event.avsc parsed by fastavro, once per process (parse_schema is not free)."""
  return fastavro.parse_schema(schema_json())


def to_avro(event: Event) -> dict:
  """An Event as the dict fastavro writes; event_time is always a double."""
  record = event._asdict()
  record['event_time'] = float(event.event_time)
  return record


def from_avro(record: dict) -> Event:
  """A record written with event.avsc back to an Event (strict: every field present)."""
  return Event(**{name: record[name] for name in Event._fields})


def write_events(fo: BinaryIO, events: Iterable[Event], codec: str = 'deflate') -> None:
  """An Avro container file of events (what `postauth parse` writes)."""
  fastavro.writer(fo, parsed_schema(), (to_avro(e) for e in events), codec=codec)


def read_events(fo: BinaryIO) -> Iterator[Event]:
  for record in fastavro.reader(fo, reader_schema=parsed_schema()):
    yield from_avro(record)
