"""Neural style transfer: the Gatys optimisation engine (engine.py), preset paintings (presets.py)
and the background job system that runs it (jobs.py, worker.py)."""
