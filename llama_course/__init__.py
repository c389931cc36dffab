"""llama-course: distributed training of LLaMA-style models, taught twice (runtime and simulator).

Importing the package is cheap; torch is imported by the modules that need it.
"""

__version__ = "0.1.0"
