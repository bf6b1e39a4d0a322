"""What a run costs and why: hardware ceilings and calibration, the analytic cost model, the profiler's capture
and roofline verdicts, plots, and TensorBoard."""
