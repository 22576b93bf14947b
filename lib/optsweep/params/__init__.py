"""What was asked for: the study's params (params/study.yaml) as validated settings, and the project's paths.

    settings  the whole params file (`StudyParams`): read, validated with one-line errors naming the key
    study     the `study:` section (data, tokenizer, training, Ray) and the base of every section
    sections  the other sections: scales, other optimizers, search, analysis
    paths     the project root and the folders of results, reports and runs, defined once
"""

from .settings import StudyParams, load_params, validate_params

__all__ = ["StudyParams", "load_params", "validate_params"]
