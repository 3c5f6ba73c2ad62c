"""flopwatch node agent: reads GPUs, attributes them to jobs, spools and pushes batches.

Importable and runnable without Django (stdlib + pynvml; numpy only for the simulator).
"""

__version__ = "0.1.0"
