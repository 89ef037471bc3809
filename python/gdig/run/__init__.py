"""Running G-DIG over a run folder: options, manifest, fingerprints, inputs, stages.

``gdig.run`` is also the API's entry point, ``gdig.run(model=..., seeds=..., ...)``
(:func:`gdig.api.run`). Once any module of this package is imported, Python binds the
name ``gdig.run`` to this package, so the package itself is made callable: calling it
calls :func:`gdig.api.run`, whichever of the two the name holds.
"""

import sys
import types
from typing import Any


class _CallablePackage(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from gdig.api import run

        return run(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
