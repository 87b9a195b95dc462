"""Request and response bodies of the HTTP API.

The ``/sam/*`` models keep the reference extension's field names, types and defaults, so
existing clients (e.g. the ``webuiapi`` package) work unchanged. The ``/sam/v2/*`` models
are new. Every field has an explicit default and a description, which is what both
pydantic 1 and 2 need (see :mod:`sd_webui_sam.api.compat`); range checks that pydantic would
only partly catch (NaN, list lengths, coordinates against the image size) are done by the
route code so that they answer 4xx with a message. Text fields are ``StrictStr``: a number or
a boolean where a name belongs is refused (422), never coerced (``true`` is no model 'True').
"""
from __future__ import annotations

from typing import Any, Dict, List, Literal, Optional, Union

from pydantic import BaseModel, Field, StrictStr

IMAGE_FIELD_DOC = (
    "The image as base64 (PNG, JPEG, WebP, ...; an optional 'data:image/...;base64,' prefix is "
    "accepted). A server file path is accepted only inside the directories the server allows."
)
DEFAULT_SAM_MODEL = "sam_vit_h_4b8939.pth"
DEFAULT_DINO_MODEL = "GroundingDINO_SwinT_OGC (694MB)"
TRANSPARENCY_DOC = (
    "Transparent pixels: 'white' (default) composites them on white, as a viewer shows the picture, so "
    "hidden colours do not leak into the masks; 'ignore' keeps the raw colour channels under the alpha, "
    "as the reference routes (/sam/sam-predict, /sam/dino-predict) do."
)
DETECTION_RULE_DOC = (
    "GroundingDINO rule for 'text': 'phrases' (default) names each box after the caption phrase it matches "
    "best, drops boxes that match no phrase past text_threshold, and lists boxes best first; 'reference' "
    "answers as /sam/dino-predict does (every box past box_threshold in the model's query order, named by "
    "the text of its tokens past text_threshold)."
)
Transparency = Literal["white", "ignore"]
DetectionRule = Literal["phrases", "reference"]
AlphaMode = Literal["hard", "soft"]
ALPHA_DOC = ("Cut-out edges: 'hard' (the mask as it is) or 'soft' (an alpha matte estimated from the image in a band "
             "around the mask's edge, for hair, fur and glass; the alpha is the PNG's 8-bit alpha channel).")
ALPHA_BAND_DOC = "Soft edges: width in pixels of the band on each side of the mask's edge; 0 = automatic from the object's size."


class ErrorResponse(BaseModel):
    """Every error answer of our routes (4xx and 5xx), FastAPI's own 422 included."""

    detail: StrictStr = Field(..., description="What went wrong, in words.")
    msg: StrictStr = Field(..., description="The same text, under the reference extension's key.")
    errors: Optional[List[Dict[str, Any]]] = Field(None, description="422 for a malformed body: FastAPI's list of field errors.")


# --------------------------------------------------------------------------------------------
# Reference-compatible bodies (/sam/*)
# --------------------------------------------------------------------------------------------


class SamPredictRequest(BaseModel):
    """Segment one image with point prompts and/or GroundingDINO boxes; answers 3 candidates."""

    sam_model_name: StrictStr = Field(DEFAULT_SAM_MODEL, description="SAM checkpoint file name (no directories).")
    input_image: StrictStr = Field(..., description=IMAGE_FIELD_DOC)
    sam_positive_points: List[List[float]] = Field([], description="Positive points, [[x, y], ...] in image pixels.")
    sam_negative_points: List[List[float]] = Field([], description="Negative points, [[x, y], ...] in image pixels.")
    dino_enabled: bool = Field(False, description="Detect boxes with GroundingDINO from dino_text_prompt.")
    dino_model_name: Optional[StrictStr] = Field(DEFAULT_DINO_MODEL, description="GroundingDINO model.")
    dino_text_prompt: Optional[StrictStr] = Field(None, description="What to detect, e.g. 'dog . cat'.")
    dino_box_threshold: Optional[float] = Field(0.3, description="Keep boxes whose best score exceeds this (0-1).")
    dino_preview_checkbox: bool = Field(False, description="Keep only the boxes listed in dino_preview_boxes_selection.")
    dino_preview_boxes_selection: Optional[List[int]] = Field(
        None, description="Indices (as returned by /sam/dino-predict) of the boxes to keep."
    )


class DINOPredictRequest(BaseModel):
    """Detect boxes for a text prompt; answers an image with the boxes drawn and their coordinates."""

    input_image: StrictStr = Field(..., description=IMAGE_FIELD_DOC)
    dino_model_name: StrictStr = Field(DEFAULT_DINO_MODEL, description="GroundingDINO model.")
    text_prompt: StrictStr = Field(..., description="What to detect, e.g. 'dog . cat'.")
    box_threshold: float = Field(0.3, description="Keep boxes whose best score exceeds this (0-1).")


class DilateMaskRequest(BaseModel):
    """Grow a mask; answers the blend, the mask and the cut-out."""

    input_image: StrictStr = Field(..., description=IMAGE_FIELD_DOC)
    mask: StrictStr = Field(..., description="The mask as base64 PNG (white = selected), same size as the image.")
    dilate_amount: int = Field(10, description="Growth as a diameter in pixels (the mask grows by about half of it).")


class ControlNetSegRequest(BaseModel):
    """Semantic segmentation refined by SAM (AutoSAM)."""

    sam_model_name: StrictStr = Field(DEFAULT_SAM_MODEL, description="SAM checkpoint file name.")
    input_image: StrictStr = Field(..., description=IMAGE_FIELD_DOC)
    processor: StrictStr = Field("seg_ofade20k", description="random, seg_ofade20k, seg_ofcoco, seg_ufade20k.")
    processor_res: int = Field(512, description="Preprocessor resolution (short side).")
    pixel_perfect: bool = Field(False, description="Derive the resolution from target_W/target_H.")
    resize_mode: Optional[int] = Field(1, description="0 just resize, 1 crop and resize, 2 resize and fill.")
    target_W: Optional[int] = Field(None, description="Target width for pixel_perfect.")
    target_H: Optional[int] = Field(None, description="Target height for pixel_perfect.")
    # extensions (not in the reference)
    seed: int = Field(0, description="Colour seed of processor 'random' (the same seed gives the same colours).")
    segmentation_map: Optional[StrictStr] = Field(
        None, description="A colour-coded ADE20K/COCO segmentation of input_image (base64), used instead of a "
                          "ControlNet preprocessor (e.g. the standalone app, which has none).")
    segmentation_dataset: Optional[StrictStr] = Field(
        None, description="'ade20k' or 'coco': the palette of segmentation_map (default: from processor).")


class CategoryMaskRequest(ControlNetSegRequest):
    """A mask of the given semantic categories (AutoSAM)."""

    category: StrictStr = Field(..., description="Category ids joined by '+', e.g. '7+12'.")


class AutoSAMConfig(BaseModel):
    """Automatic mask generator settings (same names and defaults as the reference)."""

    points_per_side: Optional[int] = Field(32, description="Grid points per image side.")
    points_per_batch: int = Field(64, description="Points decoded at once.")
    pred_iou_thresh: float = Field(0.88, description="Drop masks whose predicted IoU is below this.")
    stability_score_thresh: float = Field(0.95, description="Drop masks whose stability is below this.")
    stability_score_offset: float = Field(1.0, description="Logit offset for the stability score.")
    box_nms_thresh: float = Field(0.7, description="Box IoU for non-maximum suppression.")
    crop_n_layers: int = Field(0, description="Extra layers of image crops.")
    crop_nms_thresh: float = Field(0.7, description="Box IoU for NMS between crops.")
    crop_overlap_ratio: float = Field(512 / 1500, description="Overlap between crops.")
    crop_n_points_downscale_factor: int = Field(1, description="Point grid downscale per crop layer.")
    min_mask_region_area: int = Field(0, description="Remove islands and holes smaller than this (pixels).")


# --------------------------------------------------------------------------------------------
# v2 bodies (/sam/v2/*)
# --------------------------------------------------------------------------------------------


class MaskPostprocess(BaseModel):
    """Applied to every returned mask, in this order: fill holes, remove islands, invert, expand/shrink, feather."""

    expand: int = Field(0, ge=-512, le=512, description="Grow (positive) or shrink (negative) the final mask by this radius in pixels.")
    feather: float = Field(0.0, ge=0, le=256, description="Soft edge width in pixels (PNG output only; RLE stays binary).")
    fill_holes: bool = Field(False, description="Fill holes enclosed by the object.")
    remove_islands: int = Field(0, ge=0, description="Remove regions smaller than this area in pixels (0 = off).")
    invert: bool = Field(False, description="Select the background instead.")


class ImageUploadRequest(BaseModel):
    """Send an image once; prompt it many times by its id."""

    image: StrictStr = Field(..., description=IMAGE_FIELD_DOC)
    model: Optional[StrictStr] = Field(None, description="If given, compute this model's image embedding now.")
    transparency: Transparency = Field("white", description=TRANSPARENCY_DOC)


class ImageUploadResponse(BaseModel):
    image_id: StrictStr = Field(..., description="Pass as image_id to /sam/v2/predict and /sam/v2/detect.")
    width: int = Field(..., description="Image width in pixels.")
    height: int = Field(..., description="Image height in pixels.")
    encoded: bool = Field(False, description="True if the embedding of 'model' is now cached.")


class PredictV2Request(BaseModel):
    """Segment an image with points, boxes, a text prompt and/or a previous mask."""

    model: Optional[StrictStr] = Field(None, description="SAM checkpoint file name; default: the first available model.")
    image: Optional[StrictStr] = Field(None, description=IMAGE_FIELD_DOC + " Give this or image_id.")
    image_id: Optional[StrictStr] = Field(None, description="Id from /sam/v2/images (the image is not sent again).")
    points: List[List[float]] = Field([], description="Points [[x, y], ...] in image pixels.")
    labels: List[int] = Field([], description="One per point: 1 positive, 0 negative. Empty = all positive.")
    boxes: List[List[float]] = Field([], description="Boxes [[x1, y1, x2, y2], ...] in image pixels; one object each.")
    text: Optional[StrictStr] = Field(None, description="Detect boxes for this text with GroundingDINO and segment them.")
    dino_model: Optional[StrictStr] = Field(None, description="GroundingDINO model for 'text'; default: the first available.")
    box_threshold: float = Field(0.3, ge=0, le=1, description="GroundingDINO box threshold for 'text'.")
    text_threshold: float = Field(0.25, ge=0, le=1, description="GroundingDINO phrase threshold for 'text'.")
    previous_mask: Optional[Union[StrictStr, Dict[str, Any]]] = Field(
        None, description="A previous mask to refine: base64 PNG or COCO RLE {'size': [h, w], 'counts': ...}."
    )
    previous_logits: Optional[StrictStr] = Field(
        None, description="Low-res logits returned by an earlier call with return_logits (best for refinement)."
    )
    multimask: bool = Field(True, description="Ask the model for 3 candidate masks per object (recommended for 1 point).")
    best_only: bool = Field(False, description="Return only the highest-scoring candidate per object.")
    merge: bool = Field(False, description="Merge all objects into one mask per candidate.")
    postprocess: MaskPostprocess = Field(default_factory=MaskPostprocess, description="Mask post-processing.")
    mask_format: StrictStr = Field("png", description="'png' (base64 8-bit PNG), 'rle' (COCO RLE) or 'none'.")
    return_cutout: bool = Field(False, description="Add an RGBA cut-out (PNG base64) per mask.")
    alpha: AlphaMode = Field("hard", description=ALPHA_DOC)
    alpha_band: float = Field(0, ge=0, le=240, description=ALPHA_BAND_DOC)
    return_blend: bool = Field(False, description="Add a preview of the image with the mask drawn over it.")
    return_logits: bool = Field(False, description="Add low-res logits per mask (pass back as previous_logits).")
    hq_token_only: bool = Field(False, description="HQ-SAM only: use the HQ output token alone.")
    transparency: Transparency = Field("white", description=TRANSPARENCY_DOC + " Applies to 'image', not image_id.")
    detection_rule: DetectionRule = Field("phrases", description=DETECTION_RULE_DOC)


class MaskOut(BaseModel):
    score: float = Field(..., description="Predicted IoU of this mask.")
    box: Optional[List[int]] = Field(None, description="Tight box [x1, y1, x2, y2] of the mask (exclusive end), null if empty.")
    area: int = Field(..., description="Selected pixels.")
    mask: Optional[Union[StrictStr, Dict[str, Any]]] = Field(None, description="PNG base64 or COCO RLE, per mask_format.")
    cutout: Optional[StrictStr] = Field(None, description="RGBA PNG base64 if return_cutout.")
    blend: Optional[StrictStr] = Field(None, description="Preview PNG base64 if return_blend.")
    logits: Optional[StrictStr] = Field(None, description="Low-res logits if return_logits.")


class ObjectOut(BaseModel):
    prompt_box: Optional[List[float]] = Field(None, description="The box that prompted this object, if any.")
    phrase: Optional[StrictStr] = Field(None, description="The detected phrase when boxes came from 'text'.")
    detection_score: Optional[float] = Field(None, description="GroundingDINO score when boxes came from 'text'.")
    masks: List[MaskOut] = Field([], description="Candidates, best first when best_only, else model order.")


class PredictV2Response(BaseModel):
    image_id: StrictStr = Field(..., description="Reuse to prompt the same image again.")
    width: int = Field(..., description="Image width in pixels.")
    height: int = Field(..., description="Image height in pixels.")
    model: StrictStr = Field(..., description="The model file that answered.")
    objects: List[ObjectOut] = Field([], description="One per object (one in total when merge is true).")
    msg: StrictStr = Field("", description="Status text.")


class DetectV2Request(BaseModel):
    image: Optional[StrictStr] = Field(None, description=IMAGE_FIELD_DOC + " Give this or image_id.")
    image_id: Optional[StrictStr] = Field(None, description="Id from /sam/v2/images.")
    text: StrictStr = Field(..., description="What to detect, e.g. 'dog . cat'.")
    dino_model: Optional[StrictStr] = Field(None, description="GroundingDINO model; default: the first available.")
    box_threshold: float = Field(0.3, ge=0, le=1, description="Keep boxes whose best score exceeds this.")
    text_threshold: float = Field(0.25, ge=0, le=1, description="Phrase token threshold.")
    transparency: Transparency = Field("white", description=TRANSPARENCY_DOC + " Applies to 'image', not image_id.")
    detection_rule: DetectionRule = Field("phrases", description=DETECTION_RULE_DOC)


class DetectionOut(BaseModel):
    box: List[float] = Field(..., description="[x1, y1, x2, y2] in image pixels.")
    phrase: StrictStr = Field("", description="The words of the prompt this box matched.")
    score: float = Field(..., description="Detection confidence.")


class DetectV2Response(BaseModel):
    image_id: StrictStr = Field(..., description="Reuse to prompt the same image.")
    detections: List[DetectionOut] = Field([], description="Boxes above the threshold, best first "
                                                          "(query order with detection_rule 'reference').")


class BatchV2Request(BaseModel):
    """Segment every image of a folder on the server (only inside the allowed roots)."""

    inputs: List[StrictStr] = Field(..., description="Folders and/or image files on the server.")
    output_dir: StrictStr = Field(..., description="Where outputs go (created if missing).")
    recursive: bool = Field(False, description="Descend into sub-folders of input folders.")
    model: Optional[StrictStr] = Field(None, description="SAM checkpoint file name; default: the first available.")
    text: Optional[StrictStr] = Field(None, description="GroundingDINO prompt (text mode).")
    dino_model: Optional[StrictStr] = Field(None, description="GroundingDINO model for 'text'.")
    box_threshold: float = Field(0.3, ge=0, le=1, description="GroundingDINO box threshold for 'text'.")
    text_threshold: float = Field(0.25, ge=0, le=1, description="GroundingDINO phrase threshold for 'text'.")
    points: List[List[float]] = Field([], description="Fixed points for every image (pixels).")
    labels: List[int] = Field([], description="Labels of the fixed points; empty = all positive.")
    boxes: List[List[float]] = Field([], description="Fixed boxes for every image (pixels).")
    everything: bool = Field(False, description="Segment everything (AutoSAM) instead of prompting.")
    multimask: bool = Field(True, description="3 candidates per image (reference 'Output per image: 3').")
    per_object: bool = Field(False, description="One mask per object instead of all objects merged.")
    outputs: List[StrictStr] = Field(["mask", "cutout", "blend"], description="Any of mask, cutout, blend, coco.")
    alpha: AlphaMode = Field("hard", description=ALPHA_DOC)
    alpha_band: float = Field(0, ge=0, le=240, description=ALPHA_BAND_DOC)
    naming: StrictStr = Field("reference", description="'reference' ({stem}_{idx}_mask.png ...) or 'inpaint' (masks/{stem}.png).")
    expand: int = Field(0, ge=-512, le=512, description="Grow (+) or shrink (-) masks by this many pixels.")
    invert: bool = Field(False, description="Save the background instead of the foreground.")
    overwrite: bool = Field(False, description="Replace outputs that already exist (default: skip, so runs resume).")
    autosam_conf: Optional[Dict[str, Any]] = Field(
        None, description="AutoSAM settings for 'everything' (the /sam/controlnet-seg autosam_conf fields).")


class SegmentEverythingRequest(BaseModel):
    """Segment everything in an image (AutoSAM); answers one record per mask."""

    model: Optional[StrictStr] = Field(None, description="SAM checkpoint file name; default: the first available model.")
    image: Optional[StrictStr] = Field(None, description=IMAGE_FIELD_DOC + " Give this or image_id.")
    image_id: Optional[StrictStr] = Field(None, description="Id from /sam/v2/images (the image is not sent again).")
    autosam_conf: AutoSAMConfig = Field(AutoSAMConfig(), description="Generator settings (reference names and defaults).")
    mask_format: StrictStr = Field("rle", description="'rle' (COCO RLE per record), 'png' (base64 mask per record) or 'none'.")
    max_masks: Optional[int] = Field(None, ge=1, description="Return at most this many records, largest first.")
    transparency: Transparency = Field("white", description=TRANSPARENCY_DOC + " Applies to 'image', not image_id.")
