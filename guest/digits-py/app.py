"""POST /digits-py: the digits guest in Python, built into a component by componentize-py.

Same contract as the Rust guest (`guest/digits`): `{"pixels": [64 numbers 0..16]}` answers
`{"label": n, "probabilities": [10]}`; `{"images": [[64 numbers], ...]}` answers a list of
those; malformed input gets 400 with the reason. The model runs through wasi:nn; the HTTP
plumbing and error answers come from `guest/sdk-py/edge_infer_guest.py`.
"""

from edge_infer_guest import Handler, HttpError, Response, infer, tensor_f32

PIXELS = 64
MAX_PIXEL = 16.0
CLASSES = 10
MAX_IMAGES = 1024


class IncomingHandler(Handler):
    def respond(self, request):
        if request.method != "POST":
            raise HttpError(405, "use POST with a JSON body")
        images, single = parse_request(request.json())
        count = len(images) // PIXELS
        outputs = infer("digits", {"pixels": tensor_f32([count, PIXELS], images)})
        probabilities = outputs.f32("probabilities")
        predictions = [prediction(probabilities[i:i + CLASSES]) for i in range(0, len(probabilities), CLASSES)]
        return Response.json(predictions[0] if single else predictions)


def parse_request(value):
    if not isinstance(value, dict):
        raise HttpError(400, 'expected a JSON object with "pixels" or "images"')
    if ("pixels" in value) == ("images" in value):
        raise HttpError(400, 'expected exactly one of "pixels" or "images"')
    if "pixels" in value:
        return parse_image(value["pixels"], "pixels"), True
    images = value["images"]
    if not isinstance(images, list):
        raise HttpError(400, '"images" must be an array of images')
    if not 1 <= len(images) <= MAX_IMAGES:
        raise HttpError(400, f'"images" must hold 1 to {MAX_IMAGES} images, got {len(images)}')
    flat = []
    for index, image in enumerate(images):
        flat.extend(parse_image(image, f"images[{index}]"))
    return flat, False


def parse_image(value, field: str):
    if not isinstance(value, list):
        raise HttpError(400, f"{field} must be an array of {PIXELS} numbers")
    if len(value) != PIXELS:
        raise HttpError(400, f"{field} must hold {PIXELS} numbers, got {len(value)}")
    for index, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            raise HttpError(400, f"{field}[{index}] is not a number")
        if not 0 <= item <= MAX_PIXEL:
            raise HttpError(400, f"{field}[{index}] = {item} is outside 0..{MAX_PIXEL:g}")
    return [float(item) for item in value]


def prediction(probabilities):
    label = max(range(len(probabilities)), key=lambda i: probabilities[i])
    return {"label": label, "probabilities": probabilities}
