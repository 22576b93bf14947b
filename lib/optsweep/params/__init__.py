"""What was asked for: the study's params (params/study.yaml) as validated settings, and the project's paths.

    settings  every setting of the study, validated (pydantic) with one-line errors naming the key
    paths     the project root and the folders of results, reports and runs, defined once
"""

from .settings import StudyParams, load_params, validate_params

__all__ = ["StudyParams", "load_params", "validate_params"]
