"""A streaming timer step's earliest pending due time, kept for a bundle (transforms/earliest_pending.py):
always what reading the whole bag would give, while the bag is read once per key and bundle."""
from __future__ import annotations

import random

from postauth.transforms.earliest_pending import EarliestPending


class _Bag:
  """A bag state cell that counts its reads (each one a request on Prism)."""

  def __init__(self):
    self.items, self.reads = [], 0

  def add(self, x):
    self.items.append(x)

  def read(self):
    self.reads += 1
    return list(self.items)

  def clear(self):
    self.items = []


def test_the_earliest_is_the_bags_minimum_after_any_arrivals_and_rewrites_reading_once_a_bundle():
  rng = random.Random(7)
  earliest, bags = EarliestPending(lambda x: x[0]), {k: _Bag() for k in 'abc'}
  for bundle in range(30):
    earliest.start_bundle()
    reads = {k: b.reads for k, b in bags.items()}
    for _ in range(rng.randrange(1, 12)):
      key, bag = rng.choice(list(bags.items()))
      if rng.random() < 0.25:  # a timer takes the due ones and rewrites the bag
        cut = rng.randrange(0, 1000)
        rest = [x for x in bag.items if x[0] > cut]
        got = earliest.rewrite(key, bag, rest)
        assert bag.items == rest and got == min((x[0] for x in rest), default=None)
      else:
        got = earliest.add(key, bag, (rng.randrange(0, 1000), bundle))
        assert got == min(x[0] for x in bag.items)
    for key, bag in bags.items():
      assert bag.reads - reads[key] <= 1  # the first arrival of the bundle reads it, no other


def test_a_new_bundle_reads_the_bag_again():
  """Between bundles the bag is the runner's (a retried bundle, another worker): never trusted."""
  earliest, bag = EarliestPending(lambda x: x), _Bag()
  earliest.add('k', bag, 50)
  bag.items.append(10)  # written elsewhere: the runner's state after this bundle
  earliest.start_bundle()
  assert earliest.add('k', bag, 70) == 10 and bag.reads == 2
