"""mpqjax: hardware-aware mixed-precision quantisation and width search for Flax models.

The public API is re-exported here; see README.md for a tour.
"""

__version__ = "0.1.0"
