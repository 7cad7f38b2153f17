"""Accuracy assessment and error-adjusted areas of a land-cover map (Olofsson et al. 2014).

The chain after a map (``docs/guide/assessment.md``): draw a stratified random sample of
pixel centres (:mod:`.sampling`, ``discomkd-geo sample``), label the points (QGIS, or a
truth raster), then estimate overall, user's and producer's accuracies and each class's
area with 95 % intervals (:mod:`.assess`, ``discomkd-geo assess``), written out by
:mod:`.report`. :mod:`.estimators` holds the formulas (pure NumPy, batched),
:mod:`.strata` the measures shared by sampling and assessment, :mod:`.reference` the
reading of labelled points.

Olofsson, P., Foody, G. M., Herold, M., Stehman, S. V., Woodcock, C. E., Wulder, M. A.
(2014). Good practices for estimating area and assessing accuracy of land change. Remote
Sensing of Environment 148, 42-57.
"""

from .assess import Assessment, RegionAssessment, assess
from .estimators import Estimates, stratified_estimates
from .report import write_report
from .sampling import SamplePlan, allocate, plan_sample, sample_map, sample_size, sample_to_file

__all__ = ["Assessment", "Estimates", "RegionAssessment", "SamplePlan", "allocate", "assess",
           "plan_sample", "sample_map", "sample_size", "sample_to_file",
           "stratified_estimates", "write_report"]
