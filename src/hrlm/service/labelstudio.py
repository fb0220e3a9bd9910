"""Label Studio's side of the ML backend protocol: label configs, tasks, annotations, pre-annotations.

Label Studio (https://labelstud.io) calls an ML backend at ``/setup``, ``/predict``, ``/health``,
``/webhook`` and ``/train`` (the protocol of its ``label_studio_ml`` package). hrlm answers it under
``/labelstudio`` (:mod:`hrlm.service.routes.labelstudio`); this module holds what those routes need
and FastAPI does not: reading a text-classification labelling config, the text of a task, the label
of an annotation, and a prediction in Label Studio's result format.

A labelling config hrlm serves has one ``<Choices>`` naming (``toName``) one ``<Text>`` whose
``value`` is ``$field``, the task's data field that holds the text::

    <View>
      <Text name="text" value="$text"/>
      <Choices name="label" toName="text" choice="single">
        <Choice value="payroll"/><Choice value="leave"/><Choice value="it"/>
      </Choices>
    </View>

Example:
    >>> cfg = parse_config('<View><Text name="t" value="$text"/><Choices name="c" toName="t">'
    ...                    '<Choice value="a"/><Choice value="b"/></Choices></View>')
    >>> cfg.field, cfg.choices, cfg.multiple
    ('text', ('a', 'b'), False)
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hrlm.errors import ConfigError, DataError
from hrlm.text import check_storable

MAX_CONFIG_CHARS = 200_000
SOURCE = "labelstudio"  # the ``source`` of the review answers made from Label Studio's annotations


@dataclass(frozen=True)
class LabelConfig:
    """What hrlm reads from a Label Studio labelling config."""

    from_name: str  # the <Choices> control's name
    to_name: str  # the <Text> object's name
    field: str  # the task data field holding the text
    choices: tuple[str, ...]
    multiple: bool

    def check_labels(self, labels: Sequence[str]) -> list[str]:
        """The config's choices the model does not know (an empty list when all are known).

        Raises:
            ConfigError: no choice of the config is a label of the model.
        """
        unknown = [c for c in self.choices if c not in set(labels)]
        if len(unknown) == len(self.choices):
            raise ConfigError(
                f"none of the labelling config's choices ({', '.join(self.choices[:10])}) is a label of the "
                f"served model ({', '.join(list(labels)[:10])}); use <Choice value=...> with the model's labels."
            )
        return unknown

    def text_of(self, task: Mapping[str, Any]) -> str:
        """The text of a Label Studio task (``task["data"][field]``).

        Raises:
            DataError: the task has no such field, or it is not text.
        """
        data = task.get("data") if isinstance(task, Mapping) else None
        value = data.get(self.field) if isinstance(data, Mapping) else None
        if not isinstance(value, str):
            raise DataError(
                f"task {task.get('id') if isinstance(task, Mapping) else '?'} has no text in data.{self.field}; "
                f'the labelling config reads <Text value="${self.field}">.'
            )
        return check_storable(f"data.{self.field}", value)

    def labels_of(self, annotation: Mapping[str, Any]) -> list[str]:
        """The labels an annotation chose in this config's ``<Choices>`` (empty: nothing chosen)."""
        out: list[str] = []
        for region in annotation.get("result") or []:
            if not isinstance(region, Mapping) or region.get("type") != "choices":
                continue
            if region.get("from_name") not in (None, self.from_name):
                continue
            value = region.get("value")
            chosen = value.get("choices") if isinstance(value, Mapping) else None
            out.extend(check_storable("choices", c) for c in chosen or [] if isinstance(c, str))
        return out

    def result(self, label: str | list[str], score: float, model_version: str) -> dict[str, Any]:
        """One prediction in Label Studio's format; labels outside the config's choices are left out."""
        labels = [label] if isinstance(label, str) else list(label)
        chosen = [c for c in labels if c in self.choices]
        regions = []
        if chosen:
            regions.append(
                {
                    "from_name": self.from_name,
                    "to_name": self.to_name,
                    "type": "choices",
                    "value": {"choices": chosen},
                }
            )
        return {"model_version": model_version, "score": round(float(score), 6), "result": regions}


def parse_config(xml: str) -> LabelConfig:
    """Read a text-classification labelling config (one ``<Choices>`` on a ``<Text>``).

    Raises:
        ConfigError: the XML is not well-formed, has no ``<Choices>`` or ``<Text>`` for it, or no choice.
    """
    if not isinstance(xml, str) or not xml.strip():
        raise ConfigError("label_config is empty; send the project's labelling config (XML).")
    check_storable("label_config", xml)
    if len(xml) > MAX_CONFIG_CHARS or "<!ENTITY" in xml or "<!DOCTYPE" in xml:
        raise ConfigError("label_config is too long or declares entities; send a plain labelling config.")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise ConfigError(
            f"label_config is not well-formed XML ({exc}); check the project's labelling config."
        ) from None
    controls = [el for el in root.iter() if el.tag.lower() == "choices"]
    if not controls:
        raise ConfigError(
            "label_config has no <Choices>; hrlm's models classify texts: use a text-classification config "
            "(docs: README, Label Studio)."
        )
    control = controls[0]
    from_name, to_name = control.get("name"), control.get("toName")
    texts = {el.get("name"): el for el in root.iter() if el.tag.lower() in ("text", "hypertext")}
    target = texts.get(to_name)
    value = target.get("value", "") if target is not None else ""
    if not from_name or not to_name or target is None or not value.startswith("$"):
        raise ConfigError(
            f'<Choices> must name (toName) a <Text name=... value="$field"> of the config; found toName={to_name!r}.'
        )
    choices = tuple(v for el in control.iter() if el.tag.lower() == "choice" and (v := el.get("value") or ""))
    if not choices:
        raise ConfigError("<Choices> holds no <Choice value=...>; add one per label.")
    return LabelConfig(
        from_name=from_name,
        to_name=to_name,
        field=value[1:],
        choices=choices,
        multiple=(control.get("choice") or "single").lower() == "multiple",
    )


def project_id(value: Any) -> str:
    """The project id of the ``project`` Label Studio sends: ``"7.1700000000"`` (setup, predict) or ``{"id": 7}``."""
    if isinstance(value, Mapping):
        value = value.get("id")
    return str(value if value is not None else "").split(".", 1)[0] or "?"


def annotator(annotation: Mapping[str, Any]) -> str:
    """Who made an annotation, as Label Studio names them (an e-mail address or a user id)."""
    who = annotation.get("completed_by")
    if isinstance(who, Mapping):
        who = who.get("email") or who.get("id")
    return check_storable("completed_by", str(who if who is not None else "unknown")[:60])
