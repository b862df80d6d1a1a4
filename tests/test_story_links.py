"""Links keep the reader's context (issue #27): "Show this ensemble's errors" carries the builder's referral share into
the image browser, which then hides that share of the least certain images."""

from conftest import render_page


def test_show_errors_keeps_the_referral(dashboard_artifacts, monkeypatch, loopback):
    at = render_page(dashboard_artifacts, "fixture", "ensemble_builder", monkeypatch, refer="10", panel="refer")
    assert at.slider(key="ens_refer").value == 10.0
    at.button(key="ens_errors").click().run()
    assert not at.exception
    assert at.query_params.get("refer") in (["10"], "10")
    assert at.slider(key="br_refer").value == 10.0  # the image browser opened with the same referral
    assert any("would be referred to a pathologist" in c.value for c in at.caption)
