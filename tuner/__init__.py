"""tuner: a notebook-native lab for LLM inference. See README.md and docs/architecture.md.

`import tuner` stays light: the engine (and torch) load on first use of an attribute that needs them.
"""

__version__ = "0.1.0"

_LAZY = {
    "EngineConfig": "tuner.config",
    "SamplingParams": "tuner.config",
    "Engine": "tuner.engine.engine",
    "Workload": "tuner.engine.workload",
    "KVCacheFullError": "tuner.engine.kv_cache",
    "RunResult": "tuner.result",
    "PRESETS": "tuner.models.args",
    "ModelArgs": "tuner.models.args",
    "ENGINE_KNOBS": "tuner.knobs",
    "SAMPLING_KNOBS": "tuner.knobs",
    "Knob": "tuner.knobs",
    "calibrate": "tuner.profile.hardware",
    "hw_table": "tuner.profile.hardware",
    "tensorboard": "tuner.profile.tensorboard",
    "sweep": "tuner.tune.sweep",
    "SweepResult": "tuner.tune.result",
    "export": "tuner.tune.export",
    "load_config": "tuner.config",
    "Traffic": "tuner.serve.traffic",
    "serve_bench": "tuner.serve.bench",
    "capacity": "tuner.serve.bench",
    "ServeResult": "tuner.serve.result",
}

__all__ = ["__version__", "load_ipython_extension", "unload_ipython_extension", *_LAZY]


def _jupyter_labextension_paths() -> list[dict]:
    """Where JupyterLab finds tuner's prebuilt renderer (extension/, built into tuner/labextension)."""
    return [{"src": "labextension", "dest": "tuner-jupyterlab"}]


def load_ipython_extension(ipython) -> None:
    """`%load_ext tuner`: registers the %tuner / %%tuner magics (nothing heavy is imported yet)."""
    from .jupyter.magics import TunerMagics

    ipython.register_magics(TunerMagics(ipython))


def unload_ipython_extension(ipython) -> None:
    """`%unload_ext tuner`: removes the magics again."""
    manager = ipython.magics_manager
    for kind in ("line", "cell"):
        manager.magics[kind].pop("tuner", None)
    manager.registry.pop("TunerMagics", None)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tuner' has no attribute {name!r}")
