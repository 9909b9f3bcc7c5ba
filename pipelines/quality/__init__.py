"""Sample-quality metrics that run anywhere, with no download: exact likelihoods under the synthetic
sets' true processes, a kernel two-sample distance, a digits classifier trained and cached here,
text8 spelling accuracy, and FID from local Inception weights. Entry point: ``quality_metrics``."""
from pipelines.quality.metrics import QUALITY_METRIC, QualityMetric, headline, quality_dataset, quality_metrics

__all__ = ["QUALITY_METRIC", "QualityMetric", "headline", "quality_dataset", "quality_metrics"]
