"""Small helpers shared by the decoding loops."""


def pad_token_id(generation_config) -> int:
    """The id that fills finished rows and padding: the pad token, else the first EOS, else 0."""
    pad = getattr(generation_config, "_pad_token_tensor", None)
    if pad is None:
        pad = generation_config.pad_token_id
    if pad is None:
        eos = getattr(generation_config, "_eos_token_tensor", None)
        pad = None if eos is None else eos.flatten()[0]
    return 0 if pad is None else int(pad)
