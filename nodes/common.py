"""Shared constants of the nodes."""

CATEGORY = "style_transfer"
EXTRACTOR = "NST_EXTRACTOR"
CONTENT_TARGET = "NST_CONTENT_TARGET"
STYLE_TARGET = "NST_STYLE_TARGET"


def check_choices(node_cls, values: dict) -> None:
    """Raise ValueError if a combo input's value is not one of its choices.

    ComfyUI skips its own combo check for every input of a node that defines VALIDATE_INPUTS (in
    older versions), so such nodes call this first.
    """
    spec = node_cls.INPUT_TYPES()
    for section in ("required", "optional"):
        for name, (kind, *_) in spec.get(section, {}).items():
            if isinstance(kind, list) and values.get(name) is not None and values[name] not in kind:
                raise ValueError(f"{name} {values[name]!r} is not one of the choices: {', '.join(map(str, kind))}")
