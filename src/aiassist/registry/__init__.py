"""Model registry on a volume, and serving its versions with ONNX Runtime."""

from aiassist.registry.store import Manifest, ModelRegistry, RegistryError, TagMove

__all__ = ["Manifest", "ModelRegistry", "RegistryError", "TagMove"]
