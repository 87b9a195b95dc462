import traceback

reported = []


def report(message: str, *, exc_info: bool = False):
    text = message + ("\n" + traceback.format_exc() if exc_info else "")
    reported.append(text)
    print("*** " + text)
