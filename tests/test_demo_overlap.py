"""rapid.demo's ``--overlap`` choice: forced settings win, ``auto`` needs an idle core and a measured gain."""

import pytest

from rapid.demo import OVERLAP_MEASURED_GAIN, OVERLAP_MIN_GAIN, choose_overlap


def test_forced_settings_ignore_the_machine():
    assert choose_overlap("on", cores=1, load=9.0)[0] is True
    assert choose_overlap("off", cores=64, load=0.0, measured_gain=3.0)[0] is False


def test_auto_runs_sequentially_without_a_spare_core_or_a_gain():
    on, why = choose_overlap("auto", cores=1, load=0.0, measured_gain=2.0)
    assert not on and "1 core" in why
    on, why = choose_overlap("auto", cores=2, load=1.5, measured_gain=2.0)
    assert not on and "load 1.50" in why
    on, why = choose_overlap("auto", cores=8, load=0.2, measured_gain=OVERLAP_MIN_GAIN - 0.01)
    assert not on and "--overlap on" in why


def test_auto_overlaps_on_an_idle_machine_with_a_measured_gain():
    on, why = choose_overlap("auto", cores=4, load=0.5, measured_gain=OVERLAP_MIN_GAIN)
    assert on and "4 cores" in why


def test_recorded_gain_on_the_cpu_box_keeps_the_demo_sequential():
    # benchmarks/RESULTS.md: 1.03x median at the demo geometry on 2 cores, under the 10 % threshold
    assert OVERLAP_MEASURED_GAIN < OVERLAP_MIN_GAIN
    assert choose_overlap("auto", cores=2, load=0.0)[0] is False


def test_unknown_setting_is_refused_naming_it():
    with pytest.raises(ValueError, match="overlap must be auto, on or off"):
        choose_overlap("maybe")
