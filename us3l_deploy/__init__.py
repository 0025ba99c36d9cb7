"""us3l-deploy core: universally slimmable layers, models, width context, slicing, BN calibration,
checkpoints and profiling. Heavy optional libraries are imported lazily elsewhere."""

__version__ = "0.1.0"
