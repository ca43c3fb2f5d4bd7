"""One feature service per problem and feature-set version: ``<problem>_v1``.

A model records the service it trained on; bump the version when the feature set changes.
"""

from feast import FeatureService
from feature_views import VIEWS

for _name, _view in VIEWS.items():
    globals()[f"{_name}_v1"] = FeatureService(name=f"{_name}_v1", features=[_view])
