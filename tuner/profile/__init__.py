"""Hardware ceilings and (later) the profiler, cost model and roofline."""
