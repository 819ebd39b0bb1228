"""slope-broken: a plugin whose import fails, to show Slope reports it and keeps working."""

raise RuntimeError("slope-broken fails on import on purpose")
