"""llm-almanac: benchmark open LLMs on inference engines, one reproducible cell at a time.

The package is importable without any engine installed: heavy or engine-specific imports live
inside the functions that need them, so that `snakemake -n` and the unit tests stay fast.
"""

__version__ = "0.1.0"
