"""Model wing: pipelines, estimators, targets, metrics, splits, registry, evaluation, drift."""
