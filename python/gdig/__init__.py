"""gdig: G-DIG selection of machine-translation instruction data.

Benefit convention used everywhere: B(m, s) = grad L(s)^T H^-1 grad L(m);
positive means candidate m helps seed s (it lowers the seed's loss).
"""

__version__ = "0.1.0"
