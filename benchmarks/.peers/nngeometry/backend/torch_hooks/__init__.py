from .grads_conv import use_conv_impl_for_convs, use_unfold_impl_for_convs

__all__ = ["use_unfold_impl_for_convs", "use_conv_impl_for_convs"]
