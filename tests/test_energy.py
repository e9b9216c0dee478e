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


def test_a_run_record_and_an_rl_result_carry_the_energy(tmp_path, monkeypatch):
    """`earlyprune run` writes the training's joules and their source into the run's record (the report's
    accuracy-vs-energy plot reads them); the RL loop measures them as the supervised one does."""
    import json

    from earlyprune.cli import main

    monkeypatch.setattr(energy, "_nvml_reader", lambda: None)
    domain = write_domain(tmp_path, "intel-rapl:0", 0, max_range=10**12)
    monkeypatch.setattr(energy, "POWERCAP_ROOT", str(tmp_path))
    reads = []
    original_read = energy.EnergyMeter._read

    def read(self):  # each read of the counter sees 2 J more than the one before
        reads.append(1)
        (domain / "energy_uj").write_text(f"{2_000_000 * len(reads)}\n")
        return original_read(self)

    monkeypatch.setattr(energy.EnergyMeter, "_read", read)
    out = tmp_path / "runs.jsonl"
    assert main(["run", "--dataset", "mnist-sample", "--model", "lenet300", "--width", "0.25", "--method", "random",
                 "--sparsity", "0.5", "--epochs", "1", "--train-subset", "200", "--out", str(out)]) == 0
    (record,) = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    assert record["energy_source"] == "rapl" and record["energy_joules"] == 2.0
    monkeypatch.setattr(energy, "POWERCAP_ROOT", str(tmp_path / "absent"))
    assert main(["run", "--dataset", "mnist-sample", "--model", "lenet300", "--width", "0.25", "--method", "random",
                 "--sparsity", "0.5", "--epochs", "1", "--train-subset", "200", "--seed", "1", "--out", str(out)]) == 0
    record = json.loads(out.read_text().splitlines()[-1])
    assert record["energy_source"] == "not measured" and record["energy_joules"] is None
