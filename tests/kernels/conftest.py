"""Kernel tests run the Triton kernels on CUDA when there is a GPU, else in Triton's CPU
interpreter. The interpreter must be switched on before any kernel module is imported (the
kernel modules are imported lazily, so nothing outside these tests imports them earlier)."""

import os

import torch


def _interpreter_shims() -> None:
    """Two bugs of Triton 3.6's interpreter, patched for these tests (compiled kernels never see
    this): (1) a loop bound becomes an int through ``int(array)``, which NumPy >= 2.4 refuses for
    1-element arrays, so ``range(0, n)`` fails: read the element instead; (2) ``tl.dot`` on
    bfloat16 multiplies the raw uint16 bit patterns: widen bfloat16 operands to float32 first."""
    import triton.language as tl
    import triton.runtime.interpreter as interpreter

    patch = interpreter._patch_lang_tensor

    def patch_lang_tensor(tensor, scope):
        patch(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    interpreter._patch_lang_tensor = patch_lang_tensor
    builder = interpreter.InterpreterBuilder
    create_dot = builder.create_dot

    def widen(self, x):
        return self.cast_impl(x, tl.float32) if x.dtype.scalar == tl.bfloat16 else x

    def create_dot_bf16(self, a, b, d, *args):
        return create_dot(self, widen(self, a), widen(self, b), d, *args)

    builder.create_dot = create_dot_bf16


if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    _interpreter_shims()
