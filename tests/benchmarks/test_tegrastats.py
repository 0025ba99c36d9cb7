"""tegrastats parsing on real tegrastats lines (docs/deployment.md §4) (tegrastats cannot run here: no Jetson).

The Orin Nano line is the real capture as quoted (its elided CPU list ``…`` kept); the AGX Orin
rails are the quoted fragment. The sampler's shell snippet is checked as pure logic.
"""

import shlex

import pytest

from us3l.benchmarks import tegrastats

ORIN_NANO = ("RAM 3595/7607MB (lfb 1x1MB) SWAP 11/3804MB (cached 0MB) CPU [100%@1728,…] GR3D_FREQ 0% cpu@51C … "
             "VDD_IN 5832mW/5852mW VDD_CPU_GPU_CV 1307mW/1327mW VDD_SOC 1468mW/1468mW")
AGX_ORIN = "… VDD_GPU_SOC 3200mW/3210mW VDD_CPU_CV 1600mW/1610mW VIN_SYS_5V0 5000mW/5010mW …"


def test_orin_nano_rails_and_temperature():
    s = tegrastats.parse_line(ORIN_NANO)
    assert s.rails == {"VDD_IN": (5832, 5852), "VDD_CPU_GPU_CV": (1307, 1327), "VDD_SOC": (1468, 1468)}
    assert "RAM" not in s.rails and "SWAP" not in s.rails  # MB pairs are memory, not rails
    assert s.temps == {"cpu": 51.0}


def test_agx_orin_rails_generic():
    s = tegrastats.parse_line(AGX_ORIN)
    assert s.rails == {"VDD_GPU_SOC": (3200, 3210), "VDD_CPU_CV": (1600, 1610), "VIN_SYS_5V0": (5000, 5010)}
    assert tegrastats.total_rail([s]) == "VIN_SYS_5V0"


def test_unitless_older_format_and_lines_without_rails():
    s = tegrastats.parse_line("RAM 2000/3964MB CPU [5%@102] POM_5V_IN 3306/3306 POM_5V_GPU 0/0")
    assert s.rails == {"POM_5V_IN": (3306, 3306), "POM_5V_GPU": (0, 0)}
    assert tegrastats.parse_line("RAM 3595/7607MB (lfb 1x1MB) SWAP 11/3804MB") is None


def test_mean_power_and_energy():
    samples = tegrastats.parse_log("\n".join([ORIN_NANO, "garbage", ORIN_NANO.replace("VDD_IN 5832mW", "VDD_IN 6168mW")]))
    assert len(samples) == 2
    assert tegrastats.mean_power_mw(samples) == pytest.approx(6000.0)  # VDD_IN is the board input
    assert tegrastats.mean_power_mw(samples, rail="VDD_SOC") == pytest.approx(1468.0)
    no_total = [tegrastats.parse_line("VDD_A 100mW/100mW VDD_B 50mW/50mW")]
    assert tegrastats.mean_power_mw(no_total) == pytest.approx(150.0)  # summed when no input rail
    assert tegrastats.mean_power_mw([]) is None
    assert tegrastats.energy_per_inference_mj(6000.0, 10.0, batch=4) == pytest.approx(15.0)


def test_sampler_shell_quotes_paths():
    start, stop = tegrastats.sampler_shell("/usr/bin/tegrastats", "/tmp/a b/ts.log", 100)
    assert shlex.quote("/tmp/a b/ts.log") in start and "--interval 100" in start
    assert "US3L_TS=$!" in start and "kill" in stop
