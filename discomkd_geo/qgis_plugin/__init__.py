"""QGIS plugin: the discomkd_geo Processing provider.

Runs in QGIS's Python, which usually has neither PyTorch nor discomkd_geo: every module
here imports only the standard library and QGIS, and the algorithms run the
``discomkd-geo`` executable of the environment that installed the plugin
(``discomkd-geo qgis install``) in a subprocess.
"""


def classFactory(iface):
    """QGIS's entry point for the plugin."""
    from .plugin import DiscomkdGeoPlugin

    return DiscomkdGeoPlugin(iface)
