"""Its presence is how extensions detect Forge."""
