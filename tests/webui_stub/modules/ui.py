def gr_show(visible=True):
    return {"visible": visible, "__type__": "update"}
