"""pipelines: data shards, training on Ray Train, evaluation, sampling and MLflow tracking.

The notebook API (pipelines.api) is importable from here: `from pipelines import load_config,
train, evaluate, sample`; nothing heavy is imported until one of them is used.
"""
_API = ("load_config", "train", "evaluate", "sample")


def __getattr__(name):
    if name in _API:
        from pipelines import api

        return getattr(api, name)
    raise AttributeError(f"module 'pipelines' has no attribute {name!r}")


__all__ = list(_API)
