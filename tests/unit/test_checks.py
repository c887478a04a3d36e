"""The own-campaign share checks of validate-raw, on counts alone."""

from jobs.data.checks import own_shares

LISTED = {"uplift_20261030": {"target": 9000, "holdout": 500, "explore": 500}}


def test_routes_back_in_their_listed_shares_pass():
    failures, summary = own_shares(
        LISTED, {"uplift_20261030": {"target": 8950, "holdout": 510, "explore": 490}}, 0.001, 0.1
    )
    assert failures == []
    assert summary["campaigns"]["uplift_20261030"]["delivered"] == 9950


def test_dropped_holdout_rows_are_a_share_far_off():
    failures, _ = own_shares(LISTED, {"uplift_20261030": {"target": 9000, "holdout": 20, "explore": 500}}, 0.001, 0.1)
    assert len(failures) == 1
    assert "uplift_20261030" in failures[0] and "routes came back" in failures[0]


def test_a_partial_delivery_in_the_right_shares_is_refused_by_volume():
    failures, _ = own_shares(LISTED, {"uplift_20261030": {"target": 4500, "holdout": 250, "explore": 250}}, 0.001, 0.1)
    assert len(failures) == 1 and "5,000 of the 10,000 listed sends came back" in failures[0]


def test_an_audience_that_listed_no_one_has_no_share_to_test():
    failures, summary = own_shares({}, {"uplift_20261031": {}}, 0.001, 0.1)
    assert failures == [] and summary["campaigns"]["uplift_20261031"] == {"listed": {}, "delivered": 0}
