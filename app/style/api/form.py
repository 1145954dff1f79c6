"""The submit form of POST /v1/style/jobs: its fields, how they are read and checked (bounds, cost, shape), and how
the options endpoint describes them."""
from __future__ import annotations

import math
import secrets
import types
import typing
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from app.api.inference import media_type, unsupported
from app.style import presets
from app.style.options import MAX_STYLES, StyleParams, fit_size, too_thin

OPTION_FIELDS = ("size", "steps", "style_weight", "content_weight", "tv_weight", "init", "seed", "preserve_color",
                 "style_scale")
LIST_FIELDS = ("style_weights", "content_layers", "style_layers")  # repeated or comma-separated
FILE_FIELDS = ("content", "style")
KNOWN_FIELDS = (*FILE_FIELDS, "style_preset", *OPTION_FIELDS, *LIST_FIELDS)
FORM_OPTIONS = (*OPTION_FIELDS, *LIST_FIELDS)  # every option field of the submit form
ACCEPTED = "multipart/form-data with a 'content' image file and 'style' files and/or 'style_preset' names"


def preset_names() -> list[str]:
    return [p["name"] for p in presets.list_presets()]


def invalid_field(field: str, message: str, kind: str = "value_error", where: str = "body") -> RequestValidationError:
    return RequestValidationError([{"type": kind, "loc": (where, field), "msg": message}])


def check_cost(content_size: tuple[int, int], params: dict, limit: int, where: str = "body") -> None:
    """Output pixels x steps: one job may not hold a worker for hours while everyone else waits."""
    width, height = fit_size(*content_size, params["size"])
    cost = width * height * params["steps"]
    if cost <= limit:
        return
    most_steps = limit // (width * height)
    scale = math.sqrt(limit / cost)
    most_size = max(1, int(params["size"] * scale))
    advice = f"use at most {most_steps} steps at size {params['size']}" if most_steps >= 1 else ""
    advice += (" or " if advice else "") + f"a size of at most {most_size} at {params['steps']} steps"
    raise invalid_field("steps", f"this job is {width}x{height} px x {params['steps']} steps = {cost / 1e6:,.0f} "
                            f"megapixel-steps; one job may cost at most {limit / 1e6:,.0f} (MAX_JOB_PIXEL_STEPS): "
                            f"{advice}", "less_than_equal", where)


def check_shape(field: str, image_size: tuple[int, int], params: dict, style: bool = False) -> None:
    problem = too_thin("style" if style else "content", image_size, params["size"], params["steps"],
                       params["style_scale"] if style else None)
    if problem:
        raise invalid_field(field, problem)


@asynccontextmanager
async def style_form(request: Request, known: tuple[str, ...], accepted: str) -> AsyncIterator[list[tuple[str, Any]]]:
    """A style request's multipart fields, each name checked against `known`; its uploads stay open inside."""
    content_type = media_type(request)
    if content_type != "multipart/form-data":
        raise unsupported(content_type, accepted)
    async with request.form(max_files=MAX_STYLES + 1, max_fields=64) as form:
        items = list(form.multi_items())
        unknown = sorted({key for key, _ in items if key not in known})
        if unknown:
            raise invalid_field(unknown[0], f"unknown field(s) {', '.join(unknown)}; accepted: {', '.join(known)}",
                                "extra_forbidden")
        yield items


async def read_files(items: list[tuple[str, Any]]) -> tuple[tuple[str, bytes], list[dict]]:
    """The content upload, and the styles (uploads and presets) in the order they appear in the form."""
    content: tuple[str, bytes] | None = None
    styles: list[dict] = []
    presets = None
    for key, value in items:
        if key == "content":
            if not isinstance(value, UploadFile):
                raise invalid_field("content", "must be a file (the photo to stylise), not a text field")
            if content is not None:
                raise invalid_field("content", "send exactly one content image")
            content = (value.filename or "content", await value.read())
        elif key == "style":
            if not isinstance(value, UploadFile):
                raise invalid_field("style", "must be an image file; to use a preset painting send its name as "
                                        "'style_preset'")
            styles.append({"data": await value.read(), "upload": value.filename or f"style_{len(styles)}"})
        elif key == "style_preset":
            if isinstance(value, UploadFile):
                raise invalid_field("style_preset", "must be a preset name, not a file; upload images as 'style'")
            presets = presets if presets is not None else preset_names()
            for name in (n.strip() for n in value.split(",")):
                if not name:
                    continue
                if name not in presets:
                    raise invalid_field("style_preset", f"unknown style preset {name!r}; available presets: "
                                                   f"{', '.join(presets)}")
                styles.append({"preset": name})
    if content is None:
        raise invalid_field("content", "missing: send the photo to stylise as a file field named 'content'", "missing")
    if not styles:
        raise invalid_field("style", "no style given: send at least one 'style' image file or 'style_preset' name "
                                "(GET /v1/style/presets lists them)", "missing")
    if len(styles) > MAX_STYLES:
        raise invalid_field("style", f"{len(styles)} styles given; at most {MAX_STYLES} can be blended", "too_long")
    return content, styles


def parse_options(items: list[tuple[str, Any]], styles: list[dict], default_size: int) -> tuple[dict, dict]:
    """Form fields -> validated StyleParams -> the resolved params stored with the job."""
    options: dict[str, Any] = {}
    for key, value in items:
        if key in FILE_FIELDS or key == "style_preset":
            continue
        if isinstance(value, UploadFile):
            raise invalid_field(key, "must be a text field, not a file")
        value = value.strip()
        if key in LIST_FIELDS:
            options.setdefault(key, []).extend(v.strip() for v in value.split(",") if v.strip())
        elif key in options:
            raise invalid_field(key, "given more than once")
        elif value != "":
            options[key] = value
    try:
        params = StyleParams.model_validate(options)
        blend = params.blend(len(styles))
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]) \
            from None
    except ValueError as exc:
        raise invalid_field("style_weights", str(exc)) from None
    resolved = params.model_dump()
    resolved["size"] = params.size or default_size
    resolved["style_weights"] = [round(w, 6) for w in blend]
    if resolved["seed"] is None:
        resolved["seed"] = secrets.randbelow(2**31)  # recorded, so a job can be reproduced
    for key in ("content_layers", "style_layers"):
        if resolved[key] is None:
            del resolved[key]
    resolved["styles"] = [{"preset": s["preset"]} if "preset" in s else {"upload": s["upload"]} for s in styles]
    return resolved, options


def option_type(annotation: Any) -> tuple[str, list | None]:
    """(JSON type, choices) of a StyleParams field's annotation (Optional stripped)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)] \
        if typing.get_origin(annotation) in (typing.Union, types.UnionType) else [annotation]
    inner = args[0] if len(args) == 1 else annotation
    if typing.get_origin(inner) is Literal:
        return "string", list(typing.get_args(inner))
    if inner is bool:
        return "boolean", [False, True]
    if inner is int:
        return "integer", None
    if inner is float:
        return "number", None
    if typing.get_origin(inner) is list:
        item = (typing.get_args(inner) or (str,))[0]
        return ("array of numbers" if item in (int, float) else "array of names"), None
    return "string", None


def option_limits(field) -> dict:
    limits: dict[str, Any] = {}
    for meta in field.metadata:
        for attr, key, extra in (("ge", "min", None), ("gt", "min", "exclusive_min"), ("le", "max", None),
                                 ("lt", "max", "exclusive_max"), ("min_length", "min_items", None),
                                 ("max_length", "max_items", None)):
            value = getattr(meta, attr, None)
            if value is not None:
                limits[key] = value
                if extra:
                    limits[extra] = True
    return limits
