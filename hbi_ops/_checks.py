"""Argument checks shared by the public operators: every failure names the argument."""

import numbers

import torch


def tensor(name, value, dim=None, floating=False):
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if dim is not None and value.dim() != dim:
        raise ValueError(f"{name} must have {dim} dimensions, got shape {tuple(value.shape)}")
    if floating and not value.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor (float16, bfloat16, float32 or float64), got {value.dtype}"
        )
    return value


def shape(name, value, expected):
    """expected: a tuple of ints (or None for 'any')."""
    actual = tuple(value.shape)
    if len(actual) != len(expected) or any(e is not None and a != e for a, e in zip(actual, expected)):
        wanted = "[" + ", ".join("*" if e is None else str(e) for e in expected) + "]"
        raise ValueError(f"{name} must have shape {wanted}, got {list(actual)}")


def same_device(reference_name, reference, **others):
    for name, value in others.items():
        if value is not None and value.device != reference.device:
            raise ValueError(
                f"{name} is on {value.device} but {reference_name} is on {reference.device}; "
                "all inputs must be on the same device"
            )


def mask(name, value, expected_shape, like):
    """None -> all real; bool, integer or floating (nonzero = real) -> bool tensor."""
    if value is None:
        return torch.ones(expected_shape, dtype=torch.bool, device=like.device)
    tensor(name, value)
    if value.is_complex():
        raise TypeError(f"{name} must be a bool or integer tensor, got {value.dtype}")
    shape(name, value, expected_shape)
    return value if value.dtype == torch.bool else value != 0


def floating_or_default(name, value, expected_shape, like, fill):
    if value is None:
        return torch.full(expected_shape, fill, dtype=like.dtype, device=like.device)
    tensor(name, value, floating=True)
    shape(name, value, expected_shape)
    return value


def integer(name, value, low=None, high=None):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"[{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
        raise ValueError(f"{name} must be in {bounds}, got {value}")
    return value


def choice(name, value, options):
    if value not in options:
        raise ValueError(f"{name} must be one of {', '.join(repr(o) for o in options)}, got {value!r}")
    return value


def common_float_dtype(*tensors):
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def readable(value):
    """Whether value's data can be read on the host now: not under torch.compile, not a meta or fake
    tensor, not wrapped by a torch.func transform (vmap, grad)."""
    if torch.compiler.is_compiling() or value.device.type == "meta":
        return False
    return not torch._C._functorch.is_functorch_wrapped_tensor(value)
