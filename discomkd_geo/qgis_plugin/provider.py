"""The Processing provider: the algorithms and the setting naming the executable."""

from qgis.core import QgsProcessingProvider

from .algorithms import ALGORITHMS
from .runner import EXECUTABLE_SETTING, default_executable


class DiscomkdGeoProvider(QgsProcessingProvider):
    """``discomkd_geo``: land-cover algorithms run by the discomkd-geo executable."""

    def id(self):
        return "discomkd_geo"

    def name(self):
        return "DisCoM-KD land cover"

    def longName(self):
        return "DisCoM-KD land cover (discomkd_geo)"

    def load(self):
        """Declare the executable setting (Options > Processing > Providers), then load."""
        from processing.core.ProcessingConfig import ProcessingConfig, Setting

        ProcessingConfig.settingIcons[self.name()] = self.icon()
        ProcessingConfig.addSetting(Setting(
            self.name(), EXECUTABLE_SETTING, "discomkd-geo executable",
            default_executable(), valuetype=Setting.FILE))
        ProcessingConfig.readSettings()
        self.refreshAlgorithms()
        return True

    def unload(self):
        from processing.core.ProcessingConfig import ProcessingConfig

        ProcessingConfig.removeSetting(EXECUTABLE_SETTING)

    def loadAlgorithms(self):
        for algorithm in ALGORITHMS:
            self.addAlgorithm(algorithm())
