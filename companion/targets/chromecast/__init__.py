"""The Chromecast target: pychromecast behind the TargetAdapter interface.

Nothing is imported here, so that ``companion.targets.chromecast.status`` (pure) loads without
pychromecast; the bridge imports the adapter itself with the first Chromecast target.
"""
