import base64
import io

from fastapi import HTTPException
from PIL import Image

from modules import shared


def decode_base64_to_image(encoding):
    if encoding.startswith("data:image/"):
        encoding = encoding.split(";")[1].split(",")[1]
    try:
        image = Image.open(io.BytesIO(base64.b64decode(encoding)))
        return image
    except Exception as e:
        raise HTTPException(status_code=500, detail="Invalid encoded image") from e


def encode_pil_to_base64(image):
    if isinstance(image, str):
        return image
    with io.BytesIO() as output_bytes:
        if shared.opts.samples_format.lower() != "png":
            raise HTTPException(status_code=500, detail="Invalid image format")
        image.save(output_bytes, format="PNG")
        return base64.b64encode(output_bytes.getvalue())
