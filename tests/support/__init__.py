"""Documented helpers for the tests (``from support.backends import ...``):

- ``support.backends``: NumPy backends that take the paths the plain NumPy backend does not, so the
  planning, graph and one-kernel logic runs on the CPU and is tied to the plain path there:
  ``PlanningNumpy`` (planned steps), ``RecordingNumpy`` (planned steps with stand-in graphs that
  count captures and replays), ``OneKernelNumpy`` (a NumPy port of the one-kernel trainer),
  ``MaskingNumpy`` (ReLU masks kept as packed bits, as cuBLASLt keeps them).
- ``support.cuda``: ``DeviceLike`` (a NumPy array dressed as a CuPy one) and ``column_major``, for
  the cuBLAS and cuBLASLt wrappers' stand-in tests.
- ``support.files``: ``rewrite`` (a model file with its metadata or tensors changed) and
  ``with_header`` (with its raw safetensors header changed), for crafted-file tests.
- ``support.ranks``: ``run_ranks`` (code on N MPI ranks as a killable subprocess) and
  ``emulate_ranks`` (what N ranks compute, in this process), for distributed training tests.
- ``support.gradients``: ``numerical_grad`` (central differences) and ``assert_close``.
- ``support.training``: ``OPTIMIZERS``, the optimizer settings the training tests run through,
  ``made_steps(model)``, what the model's steps did, and ``interrupt_at``, a Ctrl-C mid-training.
"""
