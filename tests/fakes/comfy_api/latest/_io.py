"""Fake of comfy_api/latest/_io.py: the V3 schema classes the pack uses, serialised exactly as the real ones.

Covered: Schema (validate, finalize, get_v1_info), ComfyNode (GET_SCHEMA, INPUT_TYPES, GET_NODE_INFO_V1,
RETURN_TYPES...), NodeOutput, NumberDisplay and the Model, Float, Int, Combo, String, Latent, Image, Conditioning,
Clip, Vae, Mask types. Not covered: dynamic inputs, hidden inputs, async execution helpers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any


def _prune_dict(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


class NumberDisplay(str, Enum):
    number = "number"
    slider = "slider"


class Input:
    io_type: str = ""

    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                 extra_dict=None):
        self.id = id
        self.display_name = display_name
        self.optional = optional
        self.tooltip = tooltip
        self.lazy = lazy
        self.extra_dict = extra_dict if extra_dict is not None else {}

    def as_dict(self) -> dict:
        return _prune_dict({
            "display_name": self.display_name, "optional": self.optional, "tooltip": self.tooltip, "lazy": self.lazy,
        }) | _prune_dict(self.extra_dict)

    def get_io_type(self) -> str:
        return self.io_type


class WidgetInput(Input):
    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                 default: Any = None, socketless: bool = None, widget_type: str = None, force_input: bool = None,
                 extra_dict=None):
        super().__init__(id, display_name, optional, tooltip, lazy, extra_dict)
        self.default = default
        self.socketless = socketless
        self.widget_type = widget_type
        self.force_input = force_input

    def as_dict(self) -> dict:
        return super().as_dict() | _prune_dict({
            "default": self.default, "socketless": self.socketless, "widgetType": self.widget_type,
            "forceInput": self.force_input,
        })


class Output:
    io_type: str = ""

    def __init__(self, id: str = None, display_name: str = None, tooltip: str = None, is_output_list=False):
        self.id = id
        self.display_name = display_name
        self.tooltip = tooltip
        self.is_output_list = is_output_list

    def as_dict(self) -> dict:
        return _prune_dict({
            "display_name": self.display_name, "tooltip": self.tooltip, "is_output_list": self.is_output_list,
        })

    def get_io_type(self) -> str:
        return self.io_type


def _socket_type(name: str) -> type:
    """A socket-only type (MODEL, LATENT...): Input and Output classes carrying its io_type."""
    return type(name, (), {
        "io_type": name,
        "Type": Any,
        "Input": type("Input", (Input,), {"io_type": name}),
        "Output": type("Output", (Output,), {"io_type": name}),
    })


Model = _socket_type("MODEL")
Latent = _socket_type("LATENT")
Image = _socket_type("IMAGE")
Conditioning = _socket_type("CONDITIONING")
Clip = _socket_type("CLIP")
Vae = _socket_type("VAE")
Mask = _socket_type("MASK")


def Custom(io_type: str) -> type:
    return _socket_type(io_type)


class Float:
    io_type = "FLOAT"
    Type = float

    class Input(WidgetInput):
        io_type = "FLOAT"

        def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                     default: float = None, min: float = None, max: float = None, step: float = None,
                     round: float = None, display_mode: NumberDisplay = None, socketless: bool = None,
                     force_input: bool = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
            self.min, self.max, self.step, self.round, self.display_mode = min, max, step, round, display_mode

        def as_dict(self) -> dict:
            # the real Float serialises the enum member itself (a str subclass) under "display"
            return super().as_dict() | _prune_dict({
                "min": self.min, "max": self.max, "step": self.step, "round": self.round,
                "display": self.display_mode,
            })

    Output = type("Output", (Output,), {"io_type": "FLOAT"})


class Int:
    io_type = "INT"
    Type = int

    class Input(WidgetInput):
        io_type = "INT"

        def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                     default: int = None, min: int = None, max: int = None, step: int = None,
                     control_after_generate: bool = None, display_mode: NumberDisplay = None,
                     socketless: bool = None, force_input: bool = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
            self.min, self.max, self.step = min, max, step
            self.control_after_generate = control_after_generate
            self.display_mode = display_mode

        def as_dict(self) -> dict:
            return super().as_dict() | _prune_dict({
                "min": self.min, "max": self.max, "step": self.step,
                "control_after_generate": self.control_after_generate,
                "display": self.display_mode.value if self.display_mode else None,
            })

    Output = type("Output", (Output,), {"io_type": "INT"})


class String:
    io_type = "STRING"
    Type = str

    class Input(WidgetInput):
        io_type = "STRING"

        def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                     multiline=False, placeholder: str = None, default: str = None, dynamic_prompts: bool = None,
                     socketless: bool = None, force_input: bool = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
            self.multiline, self.placeholder, self.dynamic_prompts = multiline, placeholder, dynamic_prompts

        def as_dict(self) -> dict:
            return super().as_dict() | _prune_dict({
                "multiline": self.multiline, "placeholder": self.placeholder, "dynamicPrompts": self.dynamic_prompts,
            })

    Output = type("Output", (Output,), {"io_type": "STRING"})


class Combo:
    io_type = "COMBO"
    Type = str

    class Input(WidgetInput):
        io_type = "COMBO"

        def __init__(self, id: str, options: list | None = None, display_name: str = None, optional=False,
                     tooltip: str = None, lazy: bool = None, default: Any = None,
                     control_after_generate: bool = None, upload=None, image_folder=None, remote=None,
                     socketless: bool = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless)
            self.multiselect = False
            self.options = options
            self.control_after_generate = control_after_generate

        def as_dict(self) -> dict:
            return super().as_dict() | _prune_dict({
                "multiselect": self.multiselect, "options": self.options,
                "control_after_generate": self.control_after_generate,
            })


@dataclass
class NodeInfoV1:
    input: dict = None
    input_order: dict = None
    output: list = None
    output_is_list: list = None
    output_name: list = None
    output_tooltips: list = None
    name: str = None
    display_name: str = None
    description: str = None
    python_module: Any = None
    category: str = None
    output_node: bool = None
    deprecated: bool = None
    experimental: bool = None
    api_node: bool = None


@dataclass
class Schema:
    node_id: str
    display_name: str = None
    category: str = "sd"
    inputs: list = None
    outputs: list = None
    hidden: list = None
    description: str = ""
    is_input_list: bool = False
    is_output_node: bool = False
    is_deprecated: bool = False
    is_experimental: bool = False
    is_api_node: bool = False
    not_idempotent: bool = False
    enable_expand: bool = False

    def validate(self) -> None:
        input_ids = [i.id for i in self.inputs or []]
        output_ids = [o.id for o in self.outputs or []]
        issues = []
        if len(set(input_ids)) != len(input_ids):
            issues.append(f"Input ids must be unique, but {input_ids} are not.")
        if len(set(output_ids)) != len(output_ids):
            issues.append(f"Output ids must be unique, but {output_ids} are not.")
        if set(input_ids) & set(output_ids):
            issues.append(f"Ids must be unique between inputs and outputs, but {set(input_ids) & set(output_ids)} are not.")
        if issues:
            raise ValueError("\n".join(issues))

    def finalize(self) -> None:
        for i, output in enumerate(self.outputs or []):
            if output.id is None:
                output.id = f"_{i}_{output.io_type}_"

    def get_v1_info(self, cls) -> NodeInfoV1:
        inputs: dict = {"required": {}}
        for i in self.inputs or []:
            as_dict = i.as_dict()
            as_dict.pop("optional", None)
            inputs.setdefault("optional" if i.optional else "required", {})[i.id] = (i.get_io_type(), as_dict)
        outputs = self.outputs or []
        return NodeInfoV1(
            input=inputs,
            input_order={key: list(value.keys()) for key, value in inputs.items()},
            output=[o.io_type for o in outputs],
            output_is_list=[o.is_output_list for o in outputs],
            output_name=[o.display_name if o.display_name else o.io_type for o in outputs],
            output_tooltips=[o.tooltip if o.tooltip else None for o in outputs],
            name=self.node_id, display_name=self.display_name, category=self.category,
            description=self.description, output_node=self.is_output_node, deprecated=self.is_deprecated,
            experimental=self.is_experimental, api_node=self.is_api_node,
            python_module=getattr(cls, "RELATIVE_PYTHON_MODULE", "nodes"),
        )


class NodeOutput:
    def __init__(self, *args: Any, ui: dict = None, expand: dict = None, block_execution: str = None):
        self.args = args
        self.ui = ui
        self.expand = expand
        self.block_execution = block_execution

    @property
    def result(self):
        return self.args if len(self.args) > 0 else None

    def __getitem__(self, index):
        return self.args[index]


class ComfyNode:
    RELATIVE_PYTHON_MODULE = None
    SCHEMA = None

    @classmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError

    @classmethod
    def execute(cls, **kwargs) -> NodeOutput:
        raise NotImplementedError

    @classmethod
    def fingerprint_inputs(cls, **kwargs) -> Any:
        raise NotImplementedError

    @classmethod
    def FINALIZE_SCHEMA(cls) -> Schema:
        schema = cls.define_schema()
        schema.finalize()
        return schema

    @classmethod
    def GET_SCHEMA(cls) -> Schema:
        schema = cls.FINALIZE_SCHEMA()
        schema.validate()
        cls.SCHEMA = schema
        return schema

    @classmethod
    def INPUT_TYPES(cls, include_hidden=True, return_schema=False):
        schema = cls.FINALIZE_SCHEMA()
        info = schema.get_v1_info(cls)
        return (info.input, schema) if return_schema else info.input

    @classmethod
    def GET_NODE_INFO_V1(cls) -> dict:
        return asdict(cls.GET_SCHEMA().get_v1_info(cls))

    @classmethod
    def EXECUTE_NORMALIZED(cls, *args, **kwargs) -> NodeOutput:
        out = cls.execute(*args, **kwargs)
        return NodeOutput(*out) if isinstance(out, tuple) else out
