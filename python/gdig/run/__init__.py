"""Running G-DIG over a run folder: options, manifest, fingerprints, inputs, stages."""
