"""What ships: the family file, standalone and integer (ONNX QDQ) members, and the runtime.

Needs neither Lightning nor wandb: a device loads a member with torch or onnxruntime alone.
"""
