"""What ``fit(callbacks=[...])`` takes, in one place: ``Callback`` to write your own (hooks
``on_epoch_end``, ``on_batch_end``, ``on_launch_end``, ``on_interrupt``, ``on_train_end``),
``EarlyStopping``, ``ModelCheckpoint``, ``LambdaCallback``, and the ones ``fit`` makes from its
own arguments (``History``, ``ProgressBar``, ``EpochLines``, ``Checkpoint``)."""

from .training.callbacks import Callback, Checkpoint, EpochLines, History, ProgressBar
from .training.monitors import EarlyStopping, LambdaCallback, ModelCheckpoint

__all__ = ["Callback", "Checkpoint", "EarlyStopping", "EpochLines", "History", "LambdaCallback",
           "ModelCheckpoint", "ProgressBar"]
