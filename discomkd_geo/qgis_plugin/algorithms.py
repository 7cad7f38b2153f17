"""The Processing algorithms: each builds a ``discomkd-geo`` command line and runs it.

Layers become file paths (vector layers that are not files are written to a temporary
GeoPackage by QGIS), options become flags, and the command runs through
:func:`.runner.run_cli` with QGIS's feedback for progress, log and cancel. Outputs the
user picked in the dialog are passed with ``--overwrite``: QGIS's file chooser has
already asked before replacing a file.
"""

from pathlib import Path

from qgis.core import (
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingOutputString,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterField,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorDestination,
)

from .runner import EXECUTABLE_SETTING, Cancelled, CliError, run_cli

#: ``predict --mode`` choices, default first: ``inference/modes.py``'s ``MODES``, which the
#: plugin cannot import (QGIS's Python lacks the package; tests/test_modes.py compares them).
MODES = ["auto", "pixel", "windows", "dense"]
#: ``predict --fusion`` choices (``inference/settings.py``'s ``FusionName``), default first.
FUSIONS = ["product", "weighted", "confident", "average"]
MODALITIES = ["sar", "ms"]
VECTOR_FORMATS = ["gpkg", "shp", "geojson", "fgb"]


def _file_of(layer):
    """The file behind a layer: its source without QGIS's ``|option=...`` suffixes."""
    return layer.source().split("|")[0]

class _Style(QgsProcessingLayerPostProcessorInterface):
    """Applies the ``.qml`` the CLI writes beside a map to the layer QGIS loads."""

    instances = []  # QGIS keeps no reference to post-processors: keep them alive here

    def __init__(self, qml):
        super().__init__()
        self.qml = qml

    def postProcessLayer(self, layer, context, feedback):
        if Path(self.qml).is_file():
            layer.loadNamedStyle(self.qml)
            layer.triggerRepaint()

    @classmethod
    def attach(cls, context, output, qml):
        """Style ``output`` with ``qml`` when QGIS loads it at the end of the run."""
        if context.willLoadLayerOnCompletion(output):
            style = cls(qml)
            cls.instances.append(style)
            context.layerToLoadOnCompletionDetails(output).setPostProcessor(style)


class CliAlgorithm(QgsProcessingAlgorithm):
    """An algorithm that runs one ``discomkd-geo`` command."""

    NAME = ""
    DISPLAY = ""
    HELP = ""

    def name(self):
        return self.NAME

    def displayName(self):
        return self.DISPLAY

    def group(self):
        return "Land cover"

    def groupId(self):
        return "landcover"

    def shortHelpString(self):
        return self.HELP

    def createInstance(self):
        return type(self)()

    def run(self, args, feedback, outputs=()):
        """Run ``discomkd-geo args...`` with QGIS's feedback; return its stdout."""
        from processing.core.ProcessingConfig import ProcessingConfig

        executable = ProcessingConfig.getSetting(EXECUTABLE_SETTING) or None
        feedback.pushCommandInfo(" ".join([executable or "discomkd-geo", *map(str, args)]))
        try:
            return run_cli(args, executable, progress=feedback.setProgress,
                           log=feedback.pushInfo, canceled=feedback.isCanceled,
                           outputs=outputs)
        except Cancelled:
            raise QgsProcessingException("cancelled; nothing was written") from None
        except CliError as err:
            raise QgsProcessingException(str(err)) from None

    def raster_paths(self, parameters, name, context):
        """File paths of the raster layers of a multiple-layer parameter."""
        layers = self.parameterAsLayerList(parameters, name, context)
        return [_file_of(layer) for layer in layers]

    def raster_path(self, parameters, name, context):
        """File path of a raster layer parameter."""
        return _file_of(self.parameterAsRasterLayer(parameters, name, context))

    def vector_path(self, parameters, name, context, feedback):
        """``FILE`` or ``FILE:LAYER`` of a vector parameter (memory layers written out)."""
        path, layer = self.parameterAsCompatibleSourceLayerPathAndLayerName(
            parameters, name, context, VECTOR_FORMATS, "gpkg", feedback)
        return f"{path}:{layer}" if layer else path


class MapLandCover(CliAlgorithm):
    """``discomkd-geo predict``: a styled land-cover map (and probabilities, polygons)."""

    NAME = "map"
    DISPLAY = "Map land cover"
    HELP = ("Classifies a Sentinel-1 SAR scene (VV/VH in dB, one raster or one per "
            "polarisation), a Sentinel-2 scene, or both, with a discomkd_geo "
            "checkpoint (.ckpt, exported .pt, or .onnx, which needs no PyTorch), through "
            "'discomkd-geo predict'. The map is loaded with its class colours; the scene "
            "is checked against the model's training data first (units, band order). "
            "Mode 'auto' (default) maps per pixel with models given a decoder "
            "('discomkd-geo fit-decoder'), else as 'windows', which classifies each window "
            "alone; 'dense' (not for ONNX models) shares the encoders' work "
            "(faster at small strides). Per-pixel maps of one modality are smoothed so that "
            "parcels keep one class (advanced: smoothing strength, 0 turns it off; the "
            "smoothing needs PyTorch, even with an .onnx model: without it maps are unsmoothed). "
            "An area of interest limits the map to its polygons. A cloud mask (Sentinel-2 "
            "scene classification, Fmask, or 0/1) makes the masked MS pixels nodata; "
            "without one, MS band files of an L2A .SAFE are masked by its scene "
            "classification (SCL: cloud shadows, clouds, thin cirrus). "
            "Given both scenes, each pixel takes the best evidence there: where both are "
            "valid their fusion (rule 'product' by default: the branches' probabilities "
            "multiplied), elsewhere the one valid scene; the optional evidence raster says "
            "which decided each pixel (0 none, 1 MS, 2 SAR, 3 fused).")

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterMultipleLayers(
            "SAR", "Sentinel-1 SAR scene (raster, or one per polarisation)",
            QgsProcessing.TypeRaster, optional=True))
        self.addParameter(QgsProcessingParameterMultipleLayers(
            "MS", "Sentinel-2 scene (raster, or one per band)", QgsProcessing.TypeRaster,
            optional=True))
        self.addParameter(QgsProcessingParameterFile(
            "CHECKPOINT", "Model (checkpoint, exported .pt or .onnx)",
            fileFilter="discomkd_geo models (*.onnx *.pt *.ckpt);;All files (*)"))
        self.addParameter(QgsProcessingParameterEnum("MODE", "Mode", MODES, defaultValue=0))
        self.addParameter(QgsProcessingParameterNumber(
            "STRIDE", "Stride in pixels (empty: half the patch, a quarter in dense mode)",
            QgsProcessingParameterNumber.Integer, optional=True, minValue=1))
        smoothing = QgsProcessingParameterNumber(
            "SMOOTHING", "Smoothing strength of per-pixel maps (empty: the default; 0: off)",
            QgsProcessingParameterNumber.Double, optional=True, minValue=0)
        smoothing.setFlags(smoothing.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(smoothing)
        self.addParameter(QgsProcessingParameterEnum(
            "FUSION", "With both scenes: how their probabilities combine where both are valid",
            FUSIONS, defaultValue=0))
        accuracy = QgsProcessingParameterString(
            "BRANCH_ACCURACY", "Fusion 'weighted': each branch's measured accuracy, e.g. "
            "ms=0.86,sar=0.81", optional=True)
        accuracy.setFlags(accuracy.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(accuracy)
        for name, title in (("MS_MASK", "Sentinel-2 cloud mask (SCL, Fmask or 0/1 with "
                                        "1 = unavailable): masked pixels are nodata "
                                        "(empty: the SCL of an L2A .SAFE)"),
                            ("SAR_MASK", "SAR mask (0/1, 1 = unavailable)")):
            self.addParameter(QgsProcessingParameterRasterLayer(name, title, optional=True))
        self.addParameter(QgsProcessingParameterFeatureSource(
            "AOI", "Area of interest (pixels outside are nodata)",
            [QgsProcessing.TypeVectorPolygon], optional=True))
        force = QgsProcessingParameterBoolean(
            "FORCE", "Map even if the scene's units or band order look wrong",
            defaultValue=False)
        force.setFlags(force.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(force)
        self.addParameter(QgsProcessingParameterRasterDestination("OUTPUT", "Land-cover map"))
        self.addParameter(QgsProcessingParameterRasterDestination(
            "PROBABILITIES", "Class probabilities", optional=True, createByDefault=False))
        self.addParameter(QgsProcessingParameterVectorDestination(
            "VECTOR", "Land-cover polygons", optional=True, createByDefault=False))
        self.addParameter(QgsProcessingParameterRasterDestination(
            "SOURCE", "Evidence that decided each pixel (0 none, 1 MS, 2 SAR, 3 fused)",
            optional=True, createByDefault=False))

    def processAlgorithm(self, parameters, context, feedback):
        sar = self.raster_paths(parameters, "SAR", context)
        ms = self.raster_paths(parameters, "MS", context)
        if not sar and not ms:
            raise QgsProcessingException("give a SAR scene, an MS scene, or both")
        output = self.parameterAsOutputLayer(parameters, "OUTPUT", context)
        args = ["predict", "--checkpoint",
                self.parameterAsFile(parameters, "CHECKPOINT", context), "-o", output,
                "--mode", MODES[self.parameterAsEnum(parameters, "MODE", context)],
                "--overwrite"]
        args += [a for path in sar for a in ("--sar", path)]
        args += [a for path in ms for a in ("--ms", path)]
        if parameters.get("STRIDE") not in (None, ""):
            args += ["--stride", self.parameterAsInt(parameters, "STRIDE", context)]
        if parameters.get("SMOOTHING") not in (None, ""):
            args += ["--smoothing", self.parameterAsDouble(parameters, "SMOOTHING", context)]
        if sar and ms:
            args += ["--fusion", FUSIONS[self.parameterAsEnum(parameters, "FUSION", context)]]
            if accuracy := self.parameterAsString(parameters, "BRANCH_ACCURACY", context):
                args += ["--branch-accuracy", accuracy]
        if self.parameterAsBool(parameters, "FORCE", context):
            args.append("--force")
        for name, flag in (("MS_MASK", "--ms-mask"), ("SAR_MASK", "--sar-mask")):
            if parameters.get(name) is not None:
                args += [flag, self.raster_path(parameters, name, context)]
        if parameters.get("AOI") is not None:
            args += ["--aoi", self.vector_path(parameters, "AOI", context, feedback)]
        results = {"OUTPUT": output}
        for name, flag in (("PROBABILITIES", "--probabilities"), ("VECTOR", "--vector"),
                           ("SOURCE", "--source")):
            path = self.parameterAsOutputLayer(parameters, name, context)
            if path:
                args += [flag, path]
                results[name] = path
        feedback.pushInfo(self.run(args, feedback, outputs=results.values()))
        _Style.attach(context, output, str(Path(output).with_suffix(".qml")))
        if "VECTOR" in results:
            _Style.attach(context, results["VECTOR"],
                          str(Path(results["VECTOR"]).with_suffix(".qml")))
        return results


class InspectScene(CliAlgorithm):
    """``discomkd-geo inspect``: a scene's bands against the model's training data."""

    NAME = "inspect"
    DISPLAY = "Inspect a scene against a model"
    HELP = ("Compares each band of a scene with the model's training data (2nd, 50th and "
            "98th percentiles, the likely unit) through 'discomkd-geo inspect', and says "
            "whether the map algorithm would accept the scene or which option fixes it.")

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterMultipleLayers(
            "SCENE", "Scene (raster, or one per band or polarisation)",
            QgsProcessing.TypeRaster))
        self.addParameter(QgsProcessingParameterFile(
            "CHECKPOINT", "Model (checkpoint, exported .pt or .onnx)",
            fileFilter="discomkd_geo models (*.onnx *.pt *.ckpt);;All files (*)"))
        self.addParameter(QgsProcessingParameterEnum(
            "MODALITY", "Modality", MODALITIES, defaultValue=0))
        self.addOutput(QgsProcessingOutputString("REPORT", "Report"))

    def processAlgorithm(self, parameters, context, feedback):
        scenes = self.raster_paths(parameters, "SCENE", context)
        args = ["inspect", *scenes, "--checkpoint",
                self.parameterAsFile(parameters, "CHECKPOINT", context), "--modality",
                MODALITIES[self.parameterAsEnum(parameters, "MODALITY", context)]]
        report = self.run(args, feedback)
        feedback.pushInfo(report)
        return {"REPORT": report}


class Vectorize(CliAlgorithm):
    """``discomkd-geo vectorize``: polygons of a land-cover map."""

    NAME = "vectorize"
    DISPLAY = "Vectorize a land-cover map"
    HELP = ("Turns a land-cover map into polygons (one per connected region, with class, "
            "colour and area in m2 and ha) through 'discomkd-geo vectorize'; a minimum "
            "mapping unit (e.g. 0.5ha) removes smaller regions first.")

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "Land-cover map"))
        self.addParameter(QgsProcessingParameterString(
            "MMU", "Minimum mapping unit (e.g. 0.5ha, 5000m2; empty: none)", optional=True))
        self.addParameter(QgsProcessingParameterVectorDestination(
            "OUTPUT", "Polygons", QgsProcessing.TypeVectorPolygon))

    def processAlgorithm(self, parameters, context, feedback):
        output = self.parameterAsOutputLayer(parameters, "OUTPUT", context)
        args = ["vectorize", self.raster_path(parameters, "INPUT", context), "-o", output,
                "--overwrite"]
        mmu = self.parameterAsString(parameters, "MMU", context).strip()
        if mmu:
            args += ["--mmu", mmu]
        self.run(args, feedback, outputs=[output])
        _Style.attach(context, output, str(Path(output).with_suffix(".qml")))
        return {"OUTPUT": output}


class ZonalAreas(CliAlgorithm):
    """``discomkd-geo zonal``: class areas per zone."""

    NAME = "zonal"
    DISPLAY = "Class areas per zone"
    HELP = ("Tabulates, per zone (e.g. administrative units), the area of each class in "
            "ha and percent of the zone and the nodata share, keeping the zones' "
            "attributes, through 'discomkd-geo zonal'. Zones may be in any CRS.")

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "Land-cover map"))
        self.addParameter(QgsProcessingParameterFeatureSource(
            "ZONES", "Zones", [QgsProcessing.TypeVectorPolygon]))
        self.addParameter(QgsProcessingParameterFileDestination(
            "OUTPUT", "Areas table", fileFilter="CSV (*.csv);;GeoPackage (*.gpkg)"))

    def processAlgorithm(self, parameters, context, feedback):
        output = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        zones = self.vector_path(parameters, "ZONES", context, feedback)
        self.run(["zonal", self.raster_path(parameters, "INPUT", context), zones, "-o", output,
                  "--overwrite"], feedback, outputs=[output])
        return {"OUTPUT": output}



ALLOCATIONS = ["olofsson", "proportional", "equal"]
#: The interval kinds of ``discomkd-geo assess --interval`` (the first is its default;
#: tests/test_qgis.py checks both lists against the library's registries).
INTERVALS = ["score", "wald"]


class SampleForAssessment(CliAlgorithm):
    """``discomkd-geo sample``: a stratified random sample of a map to label."""

    NAME = "sample"
    DISPLAY = "Sample for accuracy assessment"
    HELP = ("Draws a stratified random sample of a land-cover map's pixel centres (the "
            "strata are its classes) through 'discomkd-geo sample'. Give the number of "
            "points, or a target standard error of the overall accuracy (e.g. 0.01) and the "
            "user's accuracy you expect: the number then follows (Olofsson et al. 2014). "
            "Allocation 'olofsson' gives each class at least the minimum and the rest in "
            "proportion to its area. Fill in the points' 'reference' column (the class you "
            "see on imagery), then run 'Assess accuracy and areas'.")

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "Land-cover map"))
        self.addParameter(QgsProcessingParameterNumber(
            "SIZE", "Number of points (empty: from the target standard error)",
            QgsProcessingParameterNumber.Integer, optional=True, minValue=1))
        self.addParameter(QgsProcessingParameterNumber(
            "TARGET_SE", "Target standard error of overall accuracy (e.g. 0.01)",
            QgsProcessingParameterNumber.Double, optional=True, minValue=0.0001,
            maxValue=0.5))
        self.addParameter(QgsProcessingParameterNumber(
            "EXPECTED_UA", "Expected user's accuracy (for the target standard error)",
            QgsProcessingParameterNumber.Double, defaultValue=0.8, minValue=0.01,
            maxValue=0.99))
        self.addParameter(QgsProcessingParameterEnum(
            "ALLOCATION", "Allocation", ALLOCATIONS, defaultValue=0))
        self.addParameter(QgsProcessingParameterNumber(
            "MIN_PER_CLASS", "Minimum points per class (allocation 'olofsson')",
            QgsProcessingParameterNumber.Integer, defaultValue=50, minValue=1))
        self.addParameter(QgsProcessingParameterFeatureSource(
            "AOI", "Area of interest", [QgsProcessing.TypeVectorPolygon], optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            "SEED", "Random seed", QgsProcessingParameterNumber.Integer, defaultValue=0))
        self.addParameter(QgsProcessingParameterVectorDestination(
            "OUTPUT", "Sample points", QgsProcessing.TypeVectorPoint))

    def processAlgorithm(self, parameters, context, feedback):
        output = self.parameterAsOutputLayer(parameters, "OUTPUT", context)
        args = ["sample", self.raster_path(parameters, "INPUT", context), "-o", output,
                "--allocation", ALLOCATIONS[self.parameterAsEnum(parameters, "ALLOCATION",
                                                                 context)],
                "--min-per-class", self.parameterAsInt(parameters, "MIN_PER_CLASS", context),
                "--seed", self.parameterAsInt(parameters, "SEED", context), "--overwrite"]
        if parameters.get("SIZE") not in (None, ""):
            args += ["-n", self.parameterAsInt(parameters, "SIZE", context)]
        elif parameters.get("TARGET_SE") not in (None, ""):
            args += ["--target-se", self.parameterAsDouble(parameters, "TARGET_SE", context),
                     "--expected-ua", self.parameterAsDouble(parameters, "EXPECTED_UA",
                                                             context)]
        else:
            raise QgsProcessingException("give a number of points or a target standard error")
        if parameters.get("AOI") is not None:
            args += ["--aoi", self.vector_path(parameters, "AOI", context, feedback)]
        feedback.pushInfo(self.run(args, feedback, outputs=[output]))
        return {"OUTPUT": output}


class AssessAccuracy(CliAlgorithm):
    """``discomkd-geo assess``: accuracy and error-adjusted areas from labelled points."""

    NAME = "assess"
    DISPLAY = "Assess accuracy and areas"
    HELP = ("Estimates a land-cover map's overall, user's and producer's accuracies and "
            "each class's area, adjusted for the map's errors, with 95% confidence "
            "intervals, from labelled reference points (e.g. those of 'Sample for accuracy "
            "assessment'), through 'discomkd-geo assess' (Olofsson et al. 2014). Writes "
            "assessment.json, assessment.csv, report.md and areas.png into the folder; "
            "points off the map, on nodata or without a label are counted and left out.")

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "Land-cover map"))
        self.addParameter(QgsProcessingParameterFeatureSource(
            "REFERENCE", "Labelled reference points", [QgsProcessing.TypeVectorPoint]))
        self.addParameter(QgsProcessingParameterField(
            "LABEL_COLUMN", "Column of reference labels (class names or codes)",
            defaultValue="reference", parentLayerParameterName="REFERENCE"))
        self.addParameter(QgsProcessingParameterFeatureSource(
            "AOI", "Area of interest", [QgsProcessing.TypeVectorPolygon], optional=True))
        self.addParameter(QgsProcessingParameterFeatureSource(
            "ZONES", "Zones (figures per zone)", [QgsProcessing.TypeVectorPolygon],
            optional=True))
        self.addParameter(QgsProcessingParameterEnum(
            "INTERVAL", "95% intervals ('score': honest with few errors in a stratum; "
            "'wald': the paper's)", INTERVALS, defaultValue=0))
        self.addParameter(QgsProcessingParameterFolderDestination("OUTPUT", "Report folder"))
        self.addOutput(QgsProcessingOutputString("REPORT", "Report"))

    def processAlgorithm(self, parameters, context, feedback):
        output = self.parameterAsString(parameters, "OUTPUT", context)
        [column] = self.parameterAsFields(parameters, "LABEL_COLUMN", context)
        args = ["assess", self.raster_path(parameters, "INPUT", context),
                self.vector_path(parameters, "REFERENCE", context, feedback),
                "--label-column", column, "-o", output, "--overwrite",
                "--interval", INTERVALS[self.parameterAsEnum(parameters, "INTERVAL", context)]]
        for name in ("AOI", "ZONES"):
            if parameters.get(name) is not None:
                args += [f"--{name.lower()}", self.vector_path(parameters, name, context,
                                                               feedback)]
        report = self.run(args, feedback, outputs=[output])
        feedback.pushInfo(report)
        return {"OUTPUT": output, "REPORT": report}


ALGORITHMS = [MapLandCover, InspectScene, Vectorize, ZonalAreas, SampleForAssessment,
              AssessAccuracy]
