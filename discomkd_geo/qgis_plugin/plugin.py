"""The plugin object QGIS creates: registers the Processing provider, nothing else."""

from qgis.core import QgsApplication

from .provider import DiscomkdGeoProvider


class DiscomkdGeoPlugin:
    """Adds the provider to the Processing registry (also under ``qgis_process``)."""

    def __init__(self, iface):
        self.iface = iface
        self.provider = None

    def initProcessing(self):
        """Register the provider (QGIS calls this before initGui, and alone headless)."""
        if self.provider is None:
            self.provider = DiscomkdGeoProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):
        self.initProcessing()

    def unload(self):
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
