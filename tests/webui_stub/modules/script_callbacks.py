"""A1111 v1.6-style registration (no ``name=``), so v1.9+-only calls fail here too."""
from collections import namedtuple

from modules import errors

ScriptCallback = namedtuple("ScriptCallback", ["script", "callback"])

callback_map = dict(
    callbacks_app_started=[],
    callbacks_model_loaded=[],
    callbacks_ui_tabs=[],
    callbacks_ui_train_tabs=[],
    callbacks_ui_settings=[],
    callbacks_before_component=[],
    callbacks_after_component=[],
    callbacks_script_unloaded=[],
    callbacks_before_reload=[],
    callbacks_infotext_pasted=[],
    callbacks_before_ui=[],
)


def _add(key, callback):
    callback_map[key].append(ScriptCallback("<stub>", callback))


def _fire(key, /, *args, **kwargs):
    results = []
    for entry in callback_map[key]:
        try:
            results.append(entry.callback(*args, **kwargs))
        except Exception:
            errors.report(f"Error executing callback {key} for {entry.script}", exc_info=True)
    return results


def clear_callbacks():
    for value in callback_map.values():
        value.clear()


def on_app_started(callback):
    _add("callbacks_app_started", callback)


def on_model_loaded(callback):
    _add("callbacks_model_loaded", callback)


def on_ui_tabs(callback):
    _add("callbacks_ui_tabs", callback)


def on_ui_settings(callback):
    _add("callbacks_ui_settings", callback)


def on_before_component(callback):
    _add("callbacks_before_component", callback)


def on_after_component(callback):
    _add("callbacks_after_component", callback)


def on_script_unloaded(callback):
    _add("callbacks_script_unloaded", callback)


def on_before_reload(callback):
    _add("callbacks_before_reload", callback)


def on_infotext_pasted(callback):
    _add("callbacks_infotext_pasted", callback)


def on_before_ui(callback):
    _add("callbacks_before_ui", callback)


def before_ui_callback():
    _fire("callbacks_before_ui")


def app_started_callback(demo, app):
    _fire("callbacks_app_started", demo, app)


def ui_settings_callback():
    _fire("callbacks_ui_settings")


def ui_tabs_callback():
    res = []
    for result in _fire("callbacks_ui_tabs"):
        res += result or []
    return res


def before_component_callback(component, **kwargs):
    _fire("callbacks_before_component", component, **kwargs)


def after_component_callback(component, **kwargs):
    _fire("callbacks_after_component", component, **kwargs)


def script_unloaded_callback():
    for entry in reversed(callback_map["callbacks_script_unloaded"]):
        try:
            entry.callback()
        except Exception:
            errors.report("Error executing callback script_unloaded", exc_info=True)
