"""Semantic segmentation classes, palettes, SAM refinement and masks by category.

Class lists and colours are the public ones the ControlNet segmentation preprocessors draw with:
ADE20K (150 classes; names with their WordNet synonyms, comma separated) and COCO panoptic
(133 classes: 80 things, 53 stuff). Class ids are positions in these lists (bed = 7 and
person = 12 in ADE20K, bed = 59 and person = 0 in COCO), as in the reference extension.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence, Union

import cv2
import numpy as np

from sd_webui_sam.autosam.editanything import blend
from sd_webui_sam.errors import SamUserError

UNLABELLED = -1

ADE20K_CLASSES = (
    ('wall', (120, 120, 120)),
    ('building, edifice', (180, 120, 120)),
    ('sky', (6, 230, 230)),
    ('floor, flooring', (80, 50, 50)),
    ('tree', (4, 200, 3)),
    ('ceiling', (120, 120, 80)),
    ('road, route', (140, 140, 140)),
    ('bed', (204, 5, 255)),
    ('windowpane, window', (230, 230, 230)),
    ('grass', (4, 250, 7)),
    ('cabinet', (224, 5, 255)),
    ('sidewalk, pavement', (235, 255, 7)),
    ('person, individual, someone, somebody, mortal, soul', (150, 5, 61)),
    ('earth, ground', (120, 120, 70)),
    ('door, double door', (8, 255, 51)),
    ('table', (255, 6, 82)),
    ('mountain, mount', (143, 255, 140)),
    ('plant, flora, plant life', (204, 255, 4)),
    ('curtain, drape, drapery, mantle, pall', (255, 51, 7)),
    ('chair', (204, 70, 3)),
    ('car, auto, automobile, machine, motorcar', (0, 102, 200)),
    ('water', (61, 230, 250)),
    ('painting, picture', (255, 6, 51)),
    ('sofa, couch, lounge', (11, 102, 255)),
    ('shelf', (255, 7, 71)),
    ('house', (255, 9, 224)),
    ('sea', (9, 7, 230)),
    ('mirror', (220, 220, 220)),
    ('rug, carpet, carpeting', (255, 9, 92)),
    ('field', (112, 9, 255)),
    ('armchair', (8, 255, 214)),
    ('seat', (7, 255, 224)),
    ('fence, fencing', (255, 184, 6)),
    ('desk', (10, 255, 71)),
    ('rock, stone', (255, 41, 10)),
    ('wardrobe, closet, press', (7, 255, 255)),
    ('lamp', (224, 255, 8)),
    ('bathtub, bathing tub, bath, tub', (102, 8, 255)),
    ('railing, rail', (255, 61, 6)),
    ('cushion', (255, 194, 7)),
    ('base, pedestal, stand', (255, 122, 8)),
    ('box', (0, 255, 20)),
    ('column, pillar', (255, 8, 41)),
    ('signboard, sign', (255, 5, 153)),
    ('chest of drawers, chest, bureau, dresser', (6, 51, 255)),
    ('counter', (235, 12, 255)),
    ('sand', (160, 150, 20)),
    ('sink', (0, 163, 255)),
    ('skyscraper', (140, 140, 140)),
    ('fireplace, hearth, open fireplace', (250, 10, 15)),
    ('refrigerator, icebox', (20, 255, 0)),
    ('grandstand, covered stand', (31, 255, 0)),
    ('path', (255, 31, 0)),
    ('stairs, steps', (255, 224, 0)),
    ('runway', (153, 255, 0)),
    ('case, display case, showcase, vitrine', (0, 0, 255)),
    ('pool table, billiard table, snooker table', (255, 71, 0)),
    ('pillow', (0, 235, 255)),
    ('screen door, screen', (0, 173, 255)),
    ('stairway, staircase', (31, 0, 255)),
    ('river', (11, 200, 200)),
    ('bridge, span', (255, 82, 0)),
    ('bookcase', (0, 255, 245)),
    ('blind, screen', (0, 61, 255)),
    ('coffee table, cocktail table', (0, 255, 112)),
    ('toilet, can, commode, crapper, pot, potty, stool, throne', (0, 255, 133)),
    ('flower', (255, 0, 0)),
    ('book', (255, 163, 0)),
    ('hill', (255, 102, 0)),
    ('bench', (194, 255, 0)),
    ('countertop', (0, 143, 255)),
    ('stove, kitchen stove, range, kitchen range, cooking stove', (51, 255, 0)),
    ('palm, palm tree', (0, 82, 255)),
    ('kitchen island', (0, 255, 41)),
    ('computer, computing machine, computing device, data processor, electronic computer, information processing system', (0, 255, 173)),
    ('swivel chair', (10, 0, 255)),
    ('boat', (173, 255, 0)),
    ('bar', (0, 255, 153)),
    ('arcade machine', (255, 92, 0)),
    ('hovel, hut, hutch, shack, shanty', (255, 0, 255)),
    ('bus, autobus, coach, charabanc, double-decker, jitney, motorbus, motorcoach, omnibus, passenger vehicle', (255, 0, 245)),
    ('towel', (255, 0, 102)),
    ('light, light source', (255, 173, 0)),
    ('truck, motortruck', (255, 0, 20)),
    ('tower', (255, 184, 184)),
    ('chandelier, pendant, pendent', (0, 31, 255)),
    ('awning, sunshade, sunblind', (0, 255, 61)),
    ('streetlight, street lamp', (0, 71, 255)),
    ('booth, cubicle, stall, kiosk', (255, 0, 204)),
    ('television receiver, television, television set, tv, tv set, idiot box, boob tube, telly, goggle box', (0, 255, 194)),
    ('airplane, aeroplane, plane', (0, 255, 82)),
    ('dirt track', (0, 10, 255)),
    ('apparel, wearing apparel, dress, clothes', (0, 112, 255)),
    ('pole', (51, 0, 255)),
    ('land, ground, soil', (0, 194, 255)),
    ('bannister, banister, balustrade, balusters, handrail', (0, 122, 255)),
    ('escalator, moving staircase, moving stairway', (0, 255, 163)),
    ('ottoman, pouf, pouffe, puff, hassock', (255, 153, 0)),
    ('bottle', (0, 255, 10)),
    ('buffet, counter, sideboard', (255, 112, 0)),
    ('poster, posting, placard, notice, bill, card', (143, 255, 0)),
    ('stage', (82, 0, 255)),
    ('van', (163, 255, 0)),
    ('ship', (255, 235, 0)),
    ('fountain', (8, 184, 170)),
    ('conveyer belt, conveyor belt, conveyer, conveyor, transporter', (133, 0, 255)),
    ('canopy', (0, 255, 92)),
    ('washer, automatic washer, washing machine', (184, 0, 255)),
    ('plaything, toy', (255, 0, 31)),
    ('swimming pool, swimming bath, natatorium', (0, 184, 255)),
    ('stool', (0, 214, 255)),
    ('barrel, cask', (255, 0, 112)),
    ('basket, handbasket', (92, 255, 0)),
    ('waterfall, falls', (0, 224, 255)),
    ('tent, collapsible shelter', (112, 224, 255)),
    ('bag', (70, 184, 160)),
    ('minibike, motorbike', (163, 0, 255)),
    ('cradle', (153, 0, 255)),
    ('oven', (71, 255, 0)),
    ('ball', (255, 0, 163)),
    ('food, solid food', (255, 204, 0)),
    ('step, stair', (255, 0, 143)),
    ('tank, storage tank', (0, 255, 235)),
    ('trade name, brand name, brand, marque', (133, 255, 0)),
    ('microwave, microwave oven', (255, 0, 235)),
    ('pot, flowerpot', (245, 0, 255)),
    ('animal, animate being, beast, brute, creature, fauna', (255, 0, 122)),
    ('bicycle, bike, wheel, cycle', (255, 245, 0)),
    ('lake', (10, 190, 212)),
    ('dishwasher, dish washer, dishwashing machine', (214, 255, 0)),
    ('screen, silver screen, projection screen', (0, 204, 255)),
    ('blanket, cover', (20, 0, 255)),
    ('sculpture', (255, 255, 0)),
    ('hood, exhaust hood', (0, 153, 255)),
    ('sconce', (0, 41, 255)),
    ('vase', (0, 255, 204)),
    ('traffic light, traffic signal, stoplight', (41, 0, 255)),
    ('tray', (41, 255, 0)),
    ('ashcan, trash can, garbage can, wastebin, ash bin, ash-bin, ashbin, dustbin, trash barrel, trash bin', (173, 0, 255)),
    ('fan', (0, 245, 255)),
    ('pier, wharf, wharfage, dock', (71, 0, 255)),
    ('crt screen', (122, 0, 255)),
    ('plate', (0, 255, 184)),
    ('monitor, monitoring device', (0, 92, 255)),
    ('bulletin board, notice board', (184, 255, 0)),
    ('shower', (0, 133, 255)),
    ('radiator', (255, 214, 0)),
    ('glass, drinking glass', (25, 194, 194)),
    ('clock', (102, 255, 0)),
    ('flag', (92, 0, 255)),
)

COCO_PANOPTIC_CLASSES = (
    ('person', (220, 20, 60)),
    ('bicycle', (119, 11, 32)),
    ('car', (0, 0, 142)),
    ('motorcycle', (0, 0, 230)),
    ('airplane', (106, 0, 228)),
    ('bus', (0, 60, 100)),
    ('train', (0, 80, 100)),
    ('truck', (0, 0, 70)),
    ('boat', (0, 0, 192)),
    ('traffic light', (250, 170, 30)),
    ('fire hydrant', (100, 170, 30)),
    ('stop sign', (220, 220, 0)),
    ('parking meter', (175, 116, 175)),
    ('bench', (250, 0, 30)),
    ('bird', (165, 42, 42)),
    ('cat', (255, 77, 255)),
    ('dog', (0, 226, 252)),
    ('horse', (182, 182, 255)),
    ('sheep', (0, 82, 0)),
    ('cow', (120, 166, 157)),
    ('elephant', (110, 76, 0)),
    ('bear', (174, 57, 255)),
    ('zebra', (199, 100, 0)),
    ('giraffe', (72, 0, 118)),
    ('backpack', (255, 179, 240)),
    ('umbrella', (0, 125, 92)),
    ('handbag', (209, 0, 151)),
    ('tie', (188, 208, 182)),
    ('suitcase', (0, 220, 176)),
    ('frisbee', (255, 99, 164)),
    ('skis', (92, 0, 73)),
    ('snowboard', (133, 129, 255)),
    ('sports ball', (78, 180, 255)),
    ('kite', (0, 228, 0)),
    ('baseball bat', (174, 255, 243)),
    ('baseball glove', (45, 89, 255)),
    ('skateboard', (134, 134, 103)),
    ('surfboard', (145, 148, 174)),
    ('tennis racket', (255, 208, 186)),
    ('bottle', (197, 226, 255)),
    ('wine glass', (171, 134, 1)),
    ('cup', (109, 63, 54)),
    ('fork', (207, 138, 255)),
    ('knife', (151, 0, 95)),
    ('spoon', (9, 80, 61)),
    ('bowl', (84, 105, 51)),
    ('banana', (74, 65, 105)),
    ('apple', (166, 196, 102)),
    ('sandwich', (208, 195, 210)),
    ('orange', (255, 109, 65)),
    ('broccoli', (0, 143, 149)),
    ('carrot', (179, 0, 194)),
    ('hot dog', (209, 99, 106)),
    ('pizza', (5, 121, 0)),
    ('donut', (227, 255, 205)),
    ('cake', (147, 186, 208)),
    ('chair', (153, 69, 1)),
    ('couch', (3, 95, 161)),
    ('potted plant', (163, 255, 0)),
    ('bed', (119, 0, 170)),
    ('dining table', (0, 182, 199)),
    ('toilet', (0, 165, 120)),
    ('tv', (183, 130, 88)),
    ('laptop', (95, 32, 0)),
    ('mouse', (130, 114, 135)),
    ('remote', (110, 129, 133)),
    ('keyboard', (166, 74, 118)),
    ('cell phone', (219, 142, 185)),
    ('microwave', (79, 210, 114)),
    ('oven', (178, 90, 62)),
    ('toaster', (65, 70, 15)),
    ('sink', (127, 167, 115)),
    ('refrigerator', (59, 105, 106)),
    ('book', (142, 108, 45)),
    ('clock', (196, 172, 0)),
    ('vase', (95, 54, 80)),
    ('scissors', (128, 76, 255)),
    ('teddy bear', (201, 57, 1)),
    ('hair drier', (246, 0, 122)),
    ('toothbrush', (191, 162, 208)),
    ('banner', (255, 255, 128)),
    ('blanket', (147, 211, 203)),
    ('bridge', (150, 100, 100)),
    ('cardboard', (168, 171, 172)),
    ('counter', (146, 112, 198)),
    ('curtain', (210, 170, 100)),
    ('door-stuff', (92, 136, 89)),
    ('floor-wood', (218, 88, 184)),
    ('flower', (241, 129, 0)),
    ('fruit', (217, 17, 255)),
    ('gravel', (124, 74, 181)),
    ('house', (70, 70, 70)),
    ('light', (255, 228, 255)),
    ('mirror-stuff', (154, 208, 0)),
    ('net', (193, 0, 92)),
    ('pillow', (76, 91, 113)),
    ('platform', (255, 180, 195)),
    ('playingfield', (106, 154, 176)),
    ('railroad', (230, 150, 140)),
    ('river', (60, 143, 255)),
    ('road', (128, 64, 128)),
    ('roof', (92, 82, 55)),
    ('sand', (254, 212, 124)),
    ('sea', (73, 77, 174)),
    ('shelf', (255, 160, 98)),
    ('snow', (255, 255, 255)),
    ('stairs', (104, 84, 109)),
    ('tent', (169, 164, 131)),
    ('towel', (225, 199, 255)),
    ('wall-brick', (137, 54, 74)),
    ('wall-stone', (135, 158, 223)),
    ('wall-tile', (7, 246, 231)),
    ('wall-wood', (107, 255, 200)),
    ('water-other', (58, 41, 149)),
    ('window-blind', (183, 121, 142)),
    ('window-other', (255, 73, 97)),
    ('tree-merged', (107, 142, 35)),
    ('fence-merged', (190, 153, 153)),
    ('ceiling-merged', (146, 139, 141)),
    ('sky-other-merged', (70, 130, 180)),
    ('cabinet-merged', (134, 199, 156)),
    ('table-merged', (209, 226, 140)),
    ('floor-other-merged', (96, 36, 108)),
    ('pavement-merged', (96, 96, 96)),
    ('mountain-merged', (64, 170, 64)),
    ('grass-merged', (152, 251, 152)),
    ('dirt-merged', (208, 229, 228)),
    ('paper-merged', (206, 186, 171)),
    ('food-other-merged', (152, 161, 64)),
    ('building-other-merged', (116, 112, 0)),
    ('rock-merged', (0, 114, 143)),
    ('wall-other-merged', (102, 102, 156)),
    ('rug-merged', (250, 141, 255)),
)


@dataclass(frozen=True)
class Dataset:
    key: str                                   # "ade20k" | "coco"
    label: str
    class_names: tuple[str, ...]               # "bed", "person, individual, someone, ..."
    palette: np.ndarray = field(repr=False)    # (N,3) uint8

    @property
    def short_names(self) -> tuple[str, ...]:
        """The first synonym of each class: what a list of choices shows."""
        return tuple(name.split(",")[0].strip() for name in self.class_names)

    def choices(self) -> list[str]:
        """'7: bed' style entries for a picker; parse_categories accepts them back."""
        return [f"{index}: {name}" for index, name in enumerate(self.short_names)]


def _dataset(key: str, label: str, table) -> Dataset:
    names = tuple(name for name, _ in table)
    palette = np.array([colour for _, colour in table], dtype=np.uint8)
    palette.setflags(write=False)
    return Dataset(key=key, label=label, class_names=names, palette=palette)


DATASETS = {
    "ade20k": _dataset("ade20k", "ADE20K (150 classes)", ADE20K_CLASSES),
    "coco": _dataset("coco", "COCO panoptic (133 classes)", COCO_PANOPTIC_CLASSES),
}


def dataset(key: str) -> Dataset:
    try:
        return DATASETS[key.lower()]
    except KeyError:
        raise SamUserError(f"Unknown segmentation dataset {key!r}; choose one of {', '.join(DATASETS)}.") from None


# ---------------------------------------------------------------------------------------------
# colour maps <-> class maps


def colourise(class_map: np.ndarray, data: Dataset) -> np.ndarray:
    """(H,W) class ids -> (H,W,3) uint8 in the dataset's palette; unlabelled pixels are black."""
    ids = np.asarray(class_map)
    out = np.zeros(ids.shape + (3,), dtype=np.uint8)
    valid = (ids >= 0) & (ids < len(data.palette))
    out[valid] = data.palette[ids[valid]]
    return out


def class_map_from_colours(colour_map: np.ndarray, data: Dataset, max_distance: float = 24.0) -> np.ndarray:
    """A colour-coded segmentation image (e.g. an uploaded one) -> (H,W) int32 class ids.

    Each colour takes the nearest palette colour within max_distance (RGB Euclidean), which
    absorbs JPEG noise and anti-aliased borders; farther colours are UNLABELLED. Where the
    palette repeats a colour (ADE20K road and skyscraper), the first class wins.
    """
    pixels = np.asarray(colour_map)
    if pixels.ndim != 3 or pixels.shape[2] < 3:
        raise SamUserError("A segmentation map must be a colour (RGB) image.")
    pixels = pixels[..., :3].astype(np.uint8)
    packed = (pixels[..., 0].astype(np.int32) << 16) | (pixels[..., 1].astype(np.int32) << 8) | pixels[..., 2]
    unique, inverse = np.unique(packed.ravel(), return_inverse=True)
    colours = np.stack([(unique >> 16) & 255, (unique >> 8) & 255, unique & 255], axis=1).astype(np.float32)
    palette = data.palette.astype(np.float32)
    ids = np.full(len(unique), UNLABELLED, dtype=np.int32)
    for start in range(0, len(unique), 4096):
        chunk = colours[start:start + 4096]
        distance = ((chunk[:, None, :] - palette[None, :, :]) ** 2).sum(axis=2)
        nearest = distance.argmin(axis=1)
        close = distance[np.arange(len(chunk)), nearest] <= max_distance ** 2
        ids[start:start + 4096] = np.where(close, nearest, UNLABELLED)
    return ids[inverse].reshape(packed.shape)


def resize_class_map(class_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a class map to (H, W) (class ids must not be interpolated)."""
    class_map = np.asarray(class_map, dtype=np.int32)
    if class_map.shape == tuple(size):
        return class_map
    return cv2.resize(class_map, (int(size[1]), int(size[0])), interpolation=cv2.INTER_NEAREST)


# ---------------------------------------------------------------------------------------------
# SAM refinement


def majority_class(class_map: np.ndarray, mask: np.ndarray) -> int:
    """The most frequent labelled class under the mask (ties: the smaller id); UNLABELLED if none."""
    values = class_map[mask]
    values = values[values >= 0]
    if values.size == 0:
        return UNLABELLED
    return int(np.bincount(values).argmax())


def refine_semantic_map(class_map: np.ndarray, masks: Iterable) -> np.ndarray:
    """Snap a per-pixel class map to SAM's segments: each automatic mask takes the majority class
    of its pixels; masks are painted largest first, so smaller (more specific) masks win.
    Pixels no mask covers keep their class."""
    class_map = np.asarray(class_map, dtype=np.int32)
    arrays = [np.asarray(m.mask() if hasattr(m, "mask") else m, dtype=bool) for m in masks]
    for array in arrays:
        if array.shape != class_map.shape:
            raise ValueError(f"mask of shape {array.shape} does not match the class map {class_map.shape}")
    arrays.sort(key=lambda mask: -int(mask.sum()))
    refined = class_map.copy()
    for mask in arrays:
        winner = majority_class(class_map, mask)
        if winner != UNLABELLED:
            refined[mask] = winner
    return refined


@dataclass(frozen=True)
class SemanticResult:
    """Before/after SAM, as class maps, colour maps and blends over the image (all image-sized)."""

    dataset: Dataset
    before: np.ndarray            # (H,W) int32 class ids
    after: np.ndarray
    before_colour: np.ndarray     # (H,W,3) uint8
    after_colour: np.ndarray
    before_blend: np.ndarray
    after_blend: np.ndarray

    def gallery(self) -> list[np.ndarray]:
        """The reference's order: [before, after, blend before, blend after]."""
        return [self.before_colour, self.after_colour, self.before_blend, self.after_blend]


def sam_refined_segmentation(image: np.ndarray, class_map: np.ndarray, masks: Iterable, data: Dataset) -> SemanticResult:
    """Refine a class map (any resolution; resized to the image) with the image's automatic masks."""
    before = resize_class_map(class_map, image.shape[:2])
    after = refine_semantic_map(before, masks)
    before_colour, after_colour = colourise(before, data), colourise(after, data)
    return SemanticResult(data, before, after, before_colour, after_colour,
                          blend(image, before_colour), blend(image, after_colour))


# ---------------------------------------------------------------------------------------------
# masks by category


def _normalise(name: str) -> str:
    return re.sub(r"[\s_-]+", " ", name.strip().lower())


def parse_categories(selection: Union[str, int, Sequence[Union[str, int]]], data: Dataset) -> list[int]:
    """Class ids from names, synonyms or ids: "bed+person", "7+12", ["bed", 12], "7: bed".

    Raises SamUserError naming what was not understood and how to write it.
    """
    if isinstance(selection, (int, np.integer)):
        items: list = [int(selection)]
    elif isinstance(selection, str):
        items = [part for part in re.split(r"[+,;\n]", selection) if part.strip()]
    else:
        items = list(selection)
    lookup: dict[str, int] = {}
    for index, full_name in enumerate(data.class_names):
        for synonym in full_name.split(","):
            lookup.setdefault(_normalise(synonym), index)
    ids: list[int] = []
    unknown: list[str] = []
    for item in items:
        if isinstance(item, (int, np.integer)):
            candidate: object = int(item)
        else:
            text = str(item).strip()
            text = re.sub(r"^(\d+)\s*:.*$", r"\1", text)      # "7: bed" from a picker
            candidate = int(text) if re.fullmatch(r"\d+", text) else lookup.get(_normalise(text))
            if candidate is None:
                unknown.append(text)
                continue
        if not 0 <= int(candidate) < len(data.class_names):
            unknown.append(str(item))
            continue
        if int(candidate) not in ids:
            ids.append(int(candidate))
    if unknown:
        raise SamUserError(
            f"Unknown {data.label} class: {', '.join(repr(u) for u in unknown)}. Use names from the class list "
            f"(e.g. {data.short_names[7]!r}) or ids 0-{len(data.class_names) - 1}, joined with '+'."
        )
    if not ids:
        raise SamUserError("No class selected: enter class names or ids, e.g. 'bed+person'.")
    return ids


def category_mask(class_map: np.ndarray, categories, data: Dataset, size: tuple[int, int] | None = None) -> np.ndarray:
    """(H,W) bool mask of the pixels whose class is one of the selected categories, at ``size``
    (the original image's (H, W)) when given."""
    ids = parse_categories(categories, data)
    class_map = np.asarray(class_map, dtype=np.int32)
    if size is not None:
        class_map = resize_class_map(class_map, size)
    return np.isin(class_map, ids)
