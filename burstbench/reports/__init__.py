"""Reports: plotly figures assembled into one self-contained HTML file."""
