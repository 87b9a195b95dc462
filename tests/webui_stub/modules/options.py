class OptionInfo:
    # v1.6 signature: no category_id, so passing one fails here as it would on v1.6.
    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None, section=None,
                 refresh=None, comment_before="", comment_after="", infotext=None, restrict_api=False):
        self.default = default
        self.label = label
        self.component = component
        self.component_args = component_args
        self.onchange = onchange
        self.section = section
        self.refresh = refresh
        self.comment_before = comment_before
        self.comment_after = comment_after
        self.infotext = infotext
        self.restrict_api = restrict_api
        self.do_not_save = False

    def link(self, label, url):
        return self

    def js(self, label, js_func):
        return self

    def info(self, info):
        return self

    def html(self, html):
        return self

    def needs_restart(self):
        return self

    def needs_reload_ui(self):
        return self


class Options:
    def __init__(self, data_labels, restricted_opts):
        self.__dict__["data_labels"] = dict(data_labels)
        self.__dict__["data"] = {k: v.default for k, v in data_labels.items()}
        self.__dict__["restricted_opts"] = restricted_opts

    def __getattr__(self, item):
        data = self.__dict__["data"]
        if item in data:
            return data[item]
        labels = self.__dict__["data_labels"]
        if item in labels:
            return labels[item].default
        raise AttributeError(item)

    def __setattr__(self, key, value):
        self.data[key] = value

    def add_option(self, key, info):
        if isinstance(info.section, tuple) and len(info.section) != 2:
            raise TypeError("sections are 2-tuples before v1.7")
        self.data_labels[key] = info
        if key not in self.data and not info.do_not_save:
            self.data[key] = info.default

    def set(self, key, value, is_api=False, run_callbacks=True):
        self.data[key] = value
        return True

    def get_default(self, key):
        info = self.data_labels.get(key)
        return None if info is None else info.default

    def onchange(self, key, func, call=True):
        if call:
            func()
