"""cxr_models: the anatomy segmenter and Anatomy-XNet, their ONNX contract, export, training and evaluation.

PyTorch is the one definition of the architectures (``segmenter``, ``anatomy_xnet``); ``export``
turns them into the ONNX files the daemon loads, ``contract`` checks such files (no PyTorch needed),
``evaluate`` scores any conforming pair with ONNX Runtime, ``train`` trains both on a GPU machine.
"""
