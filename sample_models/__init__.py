"""Sample models with committed trained weights, used by optpipe's tests, docs and benchmarks.

Each module (``digits_cnn``, ``text_encoder``, ``two_heads``) imports only torch and
numpy and exposes the model class, ``INPUT_NAMES``, ``OUTPUT_NAMES``,
``example_inputs()``, ``calibration_data()`` and ``eval_data()``. Retrain with
``python -m sample_models.train`` (needs scikit-learn).
"""
