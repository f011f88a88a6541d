"""Beam alone (no postauth code): a windowed side input refreshed by PeriodicImpulse, read by a
streaming main input after a GroupByKey -- the shape of postauth's inventory/model refresh.

  python tools/prism_side_input_repro.py [OUT] --runner=PrismRunner --prism_location=.prism/v2.77.0/prism
  python tools/prism_side_input_repro.py [OUT] --runner=FnApiRunner

Each main window should see the read of the side window it maps to (one read per second).
Seen here with Beam 2.77 on 2 cores: on Prism the main windows fire in wall-clock time but every
side input between the first and the last is empty (the reads themselves ran on time); on the
FnApiRunner every window fires at the end of the job and each side window holds the same read
many times over.
"""
import sys, time
import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms import window
from apache_beam.transforms.periodicsequence import PeriodicImpulse

T0 = time.time()
OUT = sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("--") else "side_input_repro.txt"
open(OUT, 'w').close()

class Rec(beam.DoFn):
  def process(self, kv, reads, w=beam.DoFn.WindowParam):
    with open(OUT, 'a') as f:
      f.write(f'main window [{float(w.start)-T0:.1f}, {float(w.end)-T0:.1f}) at {time.time()-T0:.1f}s: '
              f'side reads {sorted(round(r - T0, 1) for r in reads)}\n')

with beam.Pipeline(options=PipelineOptions(['--streaming'] + [a for a in sys.argv[1:] if a.startswith('--')])) as p:
  start = time.time()
  side = (p | 'Side' >> PeriodicImpulse(start_timestamp=start, stop_timestamp=start + 9, fire_interval=1)
          | 'Read' >> beam.Map(lambda t: time.time())     # the "re-read", stamped with the impulse time
          | 'SideWin' >> beam.WindowInto(window.FixedWindows(1)))
  _ = (p | 'Main' >> PeriodicImpulse(start_timestamp=start, stop_timestamp=start + 8, fire_interval=0.25)
       | 'MainWin' >> beam.WindowInto(window.SlidingWindows(2, 1))
       | beam.Map(lambda x: (1, x)) | beam.GroupByKey()
       | beam.ParDo(Rec(), beam.pvalue.AsList(side)))
print(open(OUT).read())
