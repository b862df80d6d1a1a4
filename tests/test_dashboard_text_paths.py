"""Issue 22: artifact text reaches Plotly and CSV downloads only in its plain form (dashboard/text.py)."""

import io

import pandas as pd
import plotly.graph_objects as go

from dashboard.text import csv_safe, plain_figure

LINK = '<a href="http://127.0.0.1:9/x">run</a>'


def test_plain_figure_defuses_html_in_every_data_text():
    fig = go.Figure([go.Bar(x=[LINK, "v1_b0"], y=[0.5, 0.6], name=LINK, text=[LINK, "ok"], hovertext=LINK),
                     go.Heatmap(z=[[1]], x=[LINK], y=[LINK])])
    fig.update_layout(title=LINK, xaxis_title=LINK, legend_title_text=LINK)
    fig.add_annotation(text=LINK, x=0, y=0)
    spec = plain_figure(fig).to_json()
    assert "<a" not in spec and "\\u003ca" not in spec.lower()
    assert spec.count("&lt;a href") >= 8  # shown literally: names, categories, texts, titles, the annotation
    assert fig.data[0].y == (0.5, 0.6)  # numbers untouched


def test_csv_cells_that_a_spreadsheet_would_run_are_neutralised():
    frame = pd.DataFrame({"image_id": ["=HYPERLINK(\"http://x\")", "+1", "-2", "@SUM(A1)", "SOB_B_A-14-1-100-001"],
                          "score": [-0.5, 0.1, 0.2, 0.3, 0.4]})
    back = pd.read_csv(io.StringIO(csv_safe(frame).to_csv(index=False)))
    assert back["image_id"].tolist() == ["'=HYPERLINK(\"http://x\")", "'+1", "'-2", "'@SUM(A1)", "SOB_B_A-14-1-100-001"]
    assert back["score"].tolist() == [-0.5, 0.1, 0.2, 0.3, 0.4]
    assert frame["image_id"].iloc[0].startswith("=")  # the page's own frame is not changed
