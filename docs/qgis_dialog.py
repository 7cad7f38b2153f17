"""Screenshot of the plugin's "Map land cover" dialog (docs/qgis_dialog.png), QGIS headless.

Run with QGIS's Python under a virtual X server, after ``discomkd-geo qgis install``:

    xvfb-run -s "-screen 0 1280x1024x24" /usr/bin/python3 docs/qgis_dialog.py PLUGINS_DIR SCENE MODEL OUT
"""

import sys

from qgis.core import QgsApplication, QgsProject, QgsRasterLayer
from qgis.PyQt.QtCore import QTimer

plugins, scene, model, out = sys.argv[1:5]
app = QgsApplication([], True)
app.initQgis()
sys.path[:0] = ["/usr/share/qgis/python/plugins", plugins]
from processing.core.Processing import Processing  # noqa: E402 (needs the path above)
from processing.gui.AlgorithmDialog import AlgorithmDialog  # noqa: E402

Processing.initialize()
import discomkd_geo_qgis  # noqa: E402

plugin = discomkd_geo_qgis.classFactory(None)
plugin.initProcessing()
layer = QgsRasterLayer(scene, "S1 VV VH (dB)")
QgsProject.instance().addMapLayer(layer)
algorithm = QgsApplication.processingRegistry().createAlgorithmById("discomkd_geo:map")
dialog = AlgorithmDialog(algorithm, parent=None)
dialog.setParameters({"SAR": [layer.id()], "CHECKPOINT": model, "MODE": 0})
dialog.resize(1000, 820)
dialog.show()


def grab():
    dialog.grab().save(out)
    app.quit()


QTimer.singleShot(2000, grab)
app.exec_()
