"""Callbacks that prune inside other training frameworks, each an optional extra.

* :mod:`earlyprune.integrations.lightning` — ``PruningCallback`` for PyTorch Lightning
  (``pip install 'earlyprune[lightning]'``);
* :mod:`earlyprune.integrations.transformers` — ``PruningCallback`` for the Hugging Face ``Trainer``
  (``pip install 'earlyprune[hf]'``).

Both prune at initialisation, early (EarlyCroP's trigger) or during training (activation density),
unstructured or structured, with any criterion, keep the framework's optimizers and schedulers training the
pruned model, and log each prune through the framework's logger. Importing this package imports neither
framework.
"""
