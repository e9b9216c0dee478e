"""Energy counters: RAPL read from a powercap tree (with wrap-around), "not measured" without one."""

from __future__ import annotations

from earlyprune import energy


def write_domain(root, name, value, max_range=1_000_000):
    domain = root / name
    domain.mkdir()
    (domain / "energy_uj").write_text(f"{value}\n")
    (domain / "max_energy_range_uj").write_text(f"{max_range}\n")
    return domain


def test_rapl_packages_are_summed_and_a_wrapped_counter_counted(tmp_path, monkeypatch):
    monkeypatch.setattr(energy, "POWERCAP_ROOT", str(tmp_path))
    monkeypatch.setattr(energy, "_nvml_reader", lambda: None)
    first = write_domain(tmp_path, "intel-rapl:0", 100_000)
    second = write_domain(tmp_path, "intel-rapl:1", 990_000)
    write_domain(tmp_path, "intel-rapl:0:0", 5)  # a sub-domain: inside package 0, not added again
    meter = energy.EnergyMeter().start()
    (first / "energy_uj").write_text("2600000\n")  # +2.5 J
    (second / "energy_uj").write_text("10000\n")  # wrapped: +0.02 J
    joules, source = meter.stop()
    assert source == "rapl"
    assert abs(joules - 2.52) < 1e-9


def test_without_counters_energy_is_not_measured(tmp_path, monkeypatch):
    monkeypatch.setattr(energy, "POWERCAP_ROOT", str(tmp_path / "absent"))
    monkeypatch.setattr(energy, "_nvml_reader", lambda: None)
    meter = energy.EnergyMeter().start()
    assert meter.stop() == (None, "not measured")


def test_a_training_run_records_its_energy_or_says_not_measured(tmp_path, monkeypatch):
    import torch
    from torch import nn

    from earlyprune.train import TrainConfig, train

    monkeypatch.setattr(energy, "_nvml_reader", lambda: None)
    domain = write_domain(tmp_path, "intel-rapl:0", 0, max_range=10**12)
    monkeypatch.setattr(energy, "POWERCAP_ROOT", str(tmp_path))
    original_read = energy.EnergyMeter._read
    calls = []

    def read(self):  # the package counter moves by 3 J between the start and the end of the run
        calls.append(1)
        if len(calls) == 2:
            (domain / "energy_uj").write_text("3000000\n")
        return original_read(self)

    monkeypatch.setattr(energy.EnergyMeter, "_read", read)
    data = [(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))]
    result = train(nn.Linear(3, 2), data, None, TrainConfig(epochs=1, progress=False))
    assert result.as_dict()["energy_joules"] == 3.0 and result.as_dict()["energy_source"] == "rapl"
    monkeypatch.setattr(energy, "POWERCAP_ROOT", str(tmp_path / "absent"))
    result = train(nn.Linear(3, 2), data, None, TrainConfig(epochs=1, progress=False))
    assert result.energy_joules is None and result.as_dict()["energy_source"] == "not measured"
