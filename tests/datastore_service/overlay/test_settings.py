"""Overlay settings: the snapshot schedule leaves room for a peer's refresh inside the interval."""

import pytest

from datastore_service.overlay.overlay import OverlaySettings


def test_snapshots_are_written_early_enough_for_a_peer_to_read_them_within_the_interval() -> None:
    settings = OverlaySettings(refresh_interval=0.5, snapshot_interval=10.0)
    # written at most a period after it was observed, read at most a refresh later: a refresh to spare
    assert settings.snapshot_period + settings.refresh_interval == pytest.approx(10.0 - 0.5)


@pytest.mark.parametrize("refresh", [0.0, -1.0, 2.6, 10.0])
def test_a_refresh_too_slow_for_the_interval_is_refused(refresh: float) -> None:
    with pytest.raises(ValueError, match="at most a quarter of the snapshot interval"):
        OverlaySettings(refresh_interval=refresh, snapshot_interval=10.0)
