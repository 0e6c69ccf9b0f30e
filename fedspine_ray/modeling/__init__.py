"""The model side: loading pretrained models (local directories, GGUF), PEFT LoRA, task kinds, server passes.

Role: :mod:`.paths` (where ``model.path`` points, torch-free), :mod:`.loading` (from_pretrained on local
files, GGUF dequantised once into a cache, which modules LoRA targets), :mod:`.adapters` (PEFT LoRA on
plain and pruned models; the tensor form adapters travel in), :mod:`.tasks` (classification vs causal-LM:
data rendering, loss, evaluation) and :mod:`.backend` (the global model's evaluation and importance passes,
plain torch or DeepSpeed ZeRO).
May import: config, data, pruning. Never Ray or the runtime. Importing this package imports nothing;
modules load torch/transformers themselves, so the launcher can use :mod:`.paths` alone.
"""
