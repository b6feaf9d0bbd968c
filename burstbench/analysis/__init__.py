"""Analysis over the results store: metrics, SLO attainment, goodput, comparison, importers."""
