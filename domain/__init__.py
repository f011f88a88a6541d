"""The types every layer shares: the canonical event, the window summary, the action taxonomy
and the evidence samples. Plain Python: ``models`` and ``transforms`` import these, never
each other's Beam code (issue 15's layering)."""
