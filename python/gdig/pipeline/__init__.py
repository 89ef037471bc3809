"""Running G-DIG over a run folder: options, manifest, fingerprints, inputs, stages.

Named ``pipeline``, not ``run``: ``gdig.run`` is the API's function
(:func:`gdig.api.run`), and a subpackage of the same name would replace it as an
attribute of ``gdig`` the moment any of its modules is imported.
"""
