"""What makes or alters Keras layers: ImageNet preprocessing, the lean
step's layers, LoRA adapters, dtype policies. Imports `groups` and below.
"""

__all__: list[str] = []
