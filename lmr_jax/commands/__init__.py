"""What the entry points run, importable: ``train_and_evaluate`` (train.py), ``evaluate_checkpoint``
(eval.py) and the submission scorer (``python -m lmr_jax.commands.score``). The top of the dependency
order: commands -> inference / evaluation -> training -> model, losses, data."""
