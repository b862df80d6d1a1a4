"""Machine learning with Keras 3 / TensorFlow: the ten backbones, the input pipeline, stacking, explanations.

Imported only by stages (never by ``core``, ``artifacts`` or the dashboard), so light commands never pay
TensorFlow's start-up.
"""
