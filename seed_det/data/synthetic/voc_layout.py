"""One writer of PASCAL VOC annotation files for the generated datasets (shapes, digit scenes)."""
from __future__ import annotations

from typing import Iterable, Sequence, Tuple
from xml.etree import ElementTree as ET


def voc_xml(image_id: str, size: int, objects: Iterable[Tuple[str, Sequence[float]]],
            folder: str = "") -> ET.ElementTree:
    """Annotation of a size x size image holding `objects` as (class name, [x0, y0, x1, y1]) with
    continuous pixel coordinates; VOC stores 1-based inclusive pixel indices."""
    root = ET.Element("annotation")
    if folder:
        ET.SubElement(root, "folder").text = folder
    ET.SubElement(root, "filename").text = image_id + ".jpg"
    sz = ET.SubElement(root, "size")
    for tag, val in (("width", size), ("height", size), ("depth", 3)):
        ET.SubElement(sz, tag).text = str(val)
    for name, bbox in objects:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = name
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = "0"
        bb = ET.SubElement(obj, "bndbox")
        x0, y0, x1, y1 = (int(v) for v in bbox)
        for tag, val in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1), ("ymax", y1)):
            ET.SubElement(bb, tag).text = str(val)
    return ET.ElementTree(root)
