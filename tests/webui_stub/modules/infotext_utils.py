"""modules/infotext_utils.py of A1111 1.10: how an infotext's "Key: value" pairs are quoted and read."""
import json
import re

# a "Key: value" pair: the value is a JSON string (quoted) or runs to the next comma
PAIR = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def quote(text):
    if "," not in str(text) and "\n" not in str(text) and ":" not in str(text):
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text):
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except Exception:
        return text


def parse_generation_parameters(text):
    """prompt lines, "Negative prompt: ..." lines, then one line of pairs (the last line)."""
    result = {}
    *lines, last = text.strip().split("\n")
    if len(PAIR.findall(last)) < 3:  # the host too treats a last line with fewer pairs as prompt text
        lines.append(last)
        last = ""
    prompt, negative, in_negative = "", "", False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[len("Negative prompt:"):].strip()
        if in_negative:
            negative += ("" if not negative else "\n") + line
        else:
            prompt += ("" if not prompt else "\n") + line
    result["Prompt"] = prompt
    result["Negative prompt"] = negative
    for key, value in PAIR.findall(last):
        result[key.strip()] = unquote(value.strip())
    return result

